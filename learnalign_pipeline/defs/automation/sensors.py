"""The two automation sensors, on by default (Dagster's implicit one starts stopped); the daemon (`learnalign dev`
starts one) evaluates them every 30 s. Their runs carry the tag `learnalign/loop`, so the Runs page can show one
loop or the other.

- `learnalign_reselection`: observes the dataset files on their cron and re-runs the re-selection path when one
  changed (conditions.py `reselect`).
- `learnalign_nightly`: policy training, GRPO training and benchmarks, inside the training window
  (conditions.py `gated`).
"""

import dagster as dg

from .conditions import RESELECTION_GROUPS

RESELECTION = dg.AssetSelection.groups(*sorted(RESELECTION_GROUPS), include_sources=True)

learnalign_reselection = dg.AutomationConditionSensorDefinition(
    "learnalign_reselection",
    target=RESELECTION,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    run_tags={"learnalign/loop": "reselection"},
    description="Observes the dataset files; when one changed, re-runs the re-selection path down to selected_subset in one run.",
)

learnalign_nightly = dg.AutomationConditionSensorDefinition(
    "learnalign_nightly",
    target=dg.AssetSelection.all(include_sources=True) - RESELECTION,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    run_tags={"learnalign/loop": "nightly"},
    description="Policy training, GRPO training and benchmarks whose inputs changed, inside the nightly training window.",
)
