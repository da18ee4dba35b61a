"""Jobs."""

from __future__ import annotations

import dagster as dg

EXTRA_GROUPS = ("comparison", "curriculum")  # method comparison and GradAlign curriculum: their own jobs, not the demo

# Materializes the demo graph: data -> policies -> rollouts -> gradients -> scores -> subset -> training -> benchmark.
# It observes the dataset sources first (include_sources), so the tables record which dataset version they were
# built from and the automation sensor's next observation of unchanged files re-runs nothing.
learnalign_job = dg.define_asset_job(
    "learnalign_job", selection=dg.AssetSelection.all(include_sources=True) - dg.AssetSelection.groups(*EXTRA_GROUPS), description="The whole LearnAlign pipeline."
)

# Every selection method on the same pool, rollouts and gradients (materialize learnalign_job first).
selection_comparison_job = dg.define_asset_job(
    "selection_comparison_job",
    selection=dg.AssetSelection.groups("comparison"),
    description="Methods x budgets x seeds with equal GRPO steps; Table A in miniature and accuracy-vs-budget plot.",
)

# GradAlign's adaptive curriculum: selection and checkpoint of every round (materialize learnalign_job first).
gradalign_curriculum_job = dg.define_asset_job(
    "gradalign_curriculum_job",
    selection=dg.AssetSelection.groups("curriculum") | dg.AssetSelection.assets("validation_problems"),
    description="Rounds of (score a chunk with the current policy, keep the top M/q, train T GRPO steps).",
)
