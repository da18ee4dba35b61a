"""The automation sensor, on by default (Dagster's implicit one starts stopped). It observes the dataset files on
their cron and launches the runs the conditions in `conditions.py` ask for; the daemon (`dg dev` starts one)
must be running."""

import dagster as dg

learnalign_automation = dg.AutomationConditionSensorDefinition(
    "learnalign_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates every asset's automation condition: dataset observations, re-selection, gated GPU steps.",
)
