"""The automation loop of the code location as tests drive it: one instance, the automation cursor carried from
tick to tick the way the automation sensor carries it, and the watched dataset files observed on demand."""

import datetime
import json

import dagster as dg

from learnalign_pipeline.defs.automation.conditions import hours_inside, training_window_hours
from learnalign_pipeline.defs.data.sources import benchmark_dataset, pool_dataset
from learnalign_pipeline.lib.resources import DatasetFiles


def jsonl(problems) -> str:
    """GSM8K-format JSONL lines of generated problems."""
    return "".join(json.dumps({"question": p.prompt, "answer": p.solution}) + "\n" for p in problems)


class Loop:
    """One code location, one instance, and the automation cursor carried between ticks."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, datasets: DatasetFiles):
        self.defs, self.instance, self.datasets = defs, instance, datasets
        # Evaluation times start just after the next quarter hour, so the dataset observations' */15 cron does not
        # fire in the middle of a test (one test uses fewer than 14 one-minute ticks); they stay ahead of the events.
        now = datetime.datetime.now(datetime.UTC).replace(second=0, microsecond=0)
        self.cursor, self.time = None, now + datetime.timedelta(minutes=16 - now.minute % 15)
        # and outside the training window, whatever the hour the test runs at (tests open it on purpose)
        while self.time.hour in hours_inside(training_window_hours()):
            self.time += datetime.timedelta(hours=1)
        self.keys = defs.resolve_asset_graph().get_all_asset_keys()

    def observe(self) -> None:
        sources = [pool_dataset, benchmark_dataset]
        assert dg.materialize(
            sources, selection=sources, instance=self.instance, resources={"datasets": self.datasets}
        ).success

    def tick(self, minutes: float = 1) -> set[str]:
        """One automation evaluation `minutes` after the previous one; returns the asset keys it requests."""
        self.time += datetime.timedelta(minutes=minutes)
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor, evaluation_time=self.time
        )
        self.cursor = result.cursor
        return {k.to_user_string() for k in self.keys if result.get_num_requested(k)}

    def run(self, keys, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def("learnalign_job")
        result = job.execute_in_process(
            run_config=run_config or {}, instance=self.instance, asset_selection=[dg.AssetKey(k) for k in keys]
        )
        assert result.success
        return result

    def version(self, key: str) -> str:
        return self.instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization.tags[
            "dagster/data_version"
        ]

    def materializations(self, key: str) -> int:
        return len(self.instance.fetch_materializations(dg.AssetKey(key), limit=1000).records)
