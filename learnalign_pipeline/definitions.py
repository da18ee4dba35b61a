"""The `learnalign_pipeline` code location: every asset, check, job and resource under `defs/`, with the
automation conditions of `defs/automation/conditions.py` applied to every asset in one place."""

from pathlib import Path

import dagster as dg

from .defs.automation.conditions import with_automation


@dg.definitions
def defs() -> dg.Definitions:
    return with_automation(dg.load_from_defs_folder(path_within_project=Path(__file__).parent))
