"""The `learnalign_pipeline` code location: every asset, check, job and sensor under `defs/`, the automation
conditions of `defs/automation/conditions.py` applied to every asset in one place, every resource bound once
(`lib/resources.py`), and the whole-pipeline job."""

from pathlib import Path

import dagster as dg

from .defs.automation.conditions import with_automation
from .lib.executors import default_executor
from .lib.preflight import preflighted
from .lib.resources import bind_resources

# Groups with their own jobs (`learnalign compare`, `curriculum`, `experiment`), not part of the pipeline run.
EXTRA_GROUPS = ("comparison", "curriculum", "experiment")

# Materializes the pipeline: data -> policies -> rollouts -> gradients -> scores -> subset -> training -> benchmark.
# It observes the dataset sources first (include_sources), so the tables record which dataset version they were
# built from and the automation sensor's next observation of unchanged files re-runs nothing.
learnalign_job = dg.define_asset_job(
    "learnalign_job",
    # Not `training_window`: observing it opens the nightly window.
    # (groups() leaves source assets out unless told, so without include_sources the window would be observed too)
    selection=dg.AssetSelection.all(include_sources=True)
    - dg.AssetSelection.groups(*EXTRA_GROUPS, "automation", include_sources=True),
    description="The whole LearnAlign pipeline.",
    # the CLI runs it in process; `dg launch` in step processes; both check the run config before the first step
    executor_def=preflighted(dg.multi_or_in_process_executor),
)


@dg.definitions
def defs() -> dg.Definitions:
    folder = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return with_automation(
        dg.Definitions.merge(
            folder,
            dg.Definitions(jobs=[learnalign_job], resources=bind_resources(), executor=preflighted(default_executor())),
        )
    )


def job_named(name: str) -> dg.JobDefinition:
    """A job of this code location by name, importable at module scope so that Dagster can rebuild it in other
    processes: `dg.build_reconstructable_job("learnalign_pipeline.definitions", "job_named", reconstructable_args=(name,))`."""
    return defs().resolve_job_def(name)


def reconstructable_job(name: str):
    return dg.build_reconstructable_job("learnalign_pipeline.definitions", "job_named", reconstructable_args=(name,))
