"""The selection-method comparison as one job (materialize learnalign_job first: it reuses its pool, rollouts and
gradients)."""

import dagster as dg

from ...lib.preflight import preflighted
from .signals import GROUP

selection_comparison_job = dg.define_asset_job(
    "selection_comparison_job",
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=preflighted(
        dg.multi_or_in_process_executor
    ),  # the CLI runs it in process (learnalign compare/curriculum)
    description="Methods x budgets x seeds with equal GRPO steps; Table A in miniature and accuracy-vs-budget plot.",
)
