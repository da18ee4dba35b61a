"""The pre-registered selection experiment as one job (it builds its own problems and base policy)."""

import dagster as dg

from ...lib.preflight import preflighted
from .assets import GROUP

selection_experiment_job = dg.define_asset_job(
    "selection_experiment_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Seeds x arms x pools with equal GRPO compute; paired statistics against Random, curves with bands.",
    executor_def=preflighted(dg.multi_or_in_process_executor),  # the CLI runs it in process (learnalign experiment)
)
