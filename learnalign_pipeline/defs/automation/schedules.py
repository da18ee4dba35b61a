"""Periodic re-selection: a catch-up for what automation did not launch (the sensor was off, a tick was skipped
while a parent was running). It targets the path up to `selected_subset` and asks the daemon to launch only the
assets that are stale or missing at that moment."""

import os

import dagster as dg

RESELECTION_CRON = os.environ.get("LEARNALIGN_RESELECTION_CRON", "0 1 * * *")

reselection_job = dg.define_asset_job(
    "reselection_job",
    selection=dg.AssetSelection.assets("selected_subset").upstream().materializable().required_multi_asset_neighbors(),
    description="Everything selected_subset depends on (no training, no benchmark).",
)


@dg.schedule(cron_schedule=RESELECTION_CRON, job=reselection_job, default_status=dg.DefaultScheduleStatus.RUNNING)
def periodic_reselection(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(stale_assets_only=True, tags={"learnalign/trigger": "periodic_reselection"})
