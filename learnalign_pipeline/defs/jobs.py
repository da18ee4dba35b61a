"""Jobs."""

from __future__ import annotations

import dagster as dg

# Materializes the whole graph: data -> policies -> rollouts -> gradients -> scores -> subset -> training -> benchmark.
# It observes the dataset sources first (include_sources), so the tables record which dataset version they were
# built from and the automation sensor's next observation of unchanged files re-runs nothing.
learnalign_job = dg.define_asset_job(
    "learnalign_job", selection=dg.AssetSelection.all(include_sources=True), description="The whole LearnAlign pipeline."
)
