"""GradAlign's adaptive curriculum as one job (materialize learnalign_job first)."""

import dagster as dg

from ...lib.preflight import preflighted
from .assets import GROUP

gradalign_curriculum_job = dg.define_asset_job(
    "gradalign_curriculum_job",
    selection=dg.AssetSelection.groups(GROUP) | dg.AssetSelection.assets("validation_problems"),
    executor_def=preflighted(
        dg.multi_or_in_process_executor
    ),  # the CLI runs it in process (learnalign compare/curriculum)
    description="Rounds of (score a chunk with the current policy, keep the top M/q, train T GRPO steps).",
)
