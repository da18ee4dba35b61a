"""The daily loop as a user runs it, for the end-to-end test and `scripts/loop_wall_time.py`: a LEARNALIGN_HOME with
file-backed pool and benchmark (GSM8K format), a bootstrap run, the Dagster services as subprocesses, a pool edit,
and waiting for the loop to settle. Only public Dagster APIs and modules that every version of the pipeline has, so
the script can time the code before and after a change with the same harness."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]


def jsonl(problems) -> str:
    return "".join(json.dumps({"question": p.prompt, "answer": p.solution}) + "\n" for p in problems)


def tiny_run_config() -> dict:
    """The smoke preset with a far smaller pre-training: the loop needs a policy, not a good one."""
    from learnalign_pipeline.presets import SMOKE

    config = copy.deepcopy(SMOKE)
    ops = config["ops"]
    ops["pretrained_policy"]["config"].update(corpus_size=300, steps=4, batch_size=16, intermediate_size=64)
    ops["warmup_policy"]["config"].update(subset_size=8, steps=1, num_samples=2)
    ops["rollouts_and_success_rates"]["config"].update(num_samples=2)
    ops["selected_subset"]["config"].update(budget=8)
    ops["trained_policy"]["config"].update(steps=3, problems_per_step=4, num_samples=2)
    ops["benchmark_results"]["config"].update(fewshot=0, sampled_n=0)
    return config


def far_from_now_window() -> str:
    """A training window (UTC hours) that does not contain the next few hours, so no training starts mid-test."""
    start = (time.gmtime().tm_hour + 8) % 24
    return f"{start:02d}-{(start + 1) % 24:02d}"


@dataclass
class LoopHome:
    root: Path
    # Enough problems that the barely pre-trained policy solves some of them sometimes: a pool without a learnable
    # problem fails selected_subset (issue 16), and with 24 none was.
    pool_size: int = 128
    benchmark_size: int = 16
    home: Path = field(init=False)
    dagster_home: Path = field(init=False)
    pool: Path = field(init=False)
    benchmark: Path = field(init=False)

    def __post_init__(self):
        from learnalign_pipeline.core.data.arithmetic import generate_problems

        self.home, self.pool, self.benchmark = self.root / "home", self.root / "pool.jsonl", self.root / "test.jsonl"
        self.dagster_home = self.home / "dagster_home"
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.pool.write_text(jsonl(generate_problems(self.pool_size, seed=31)))
        self.benchmark.write_text(jsonl(generate_problems(self.benchmark_size, seed=32)))

    def env(self, **extra: str) -> dict:
        return {
            **os.environ,
            "LEARNALIGN_HOME": str(self.home),
            "DAGSTER_HOME": str(self.dagster_home),
            "LEARNALIGN_POOL_PATH": str(self.pool),
            "LEARNALIGN_BENCHMARK_PATH": str(self.benchmark),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            **extra,
        }

    def edit_pool(self, remove: int, add: int, seed: int = 77) -> tuple[list[str], list[str]]:
        """Remove the first `remove` rows and append `add` new problems; returns (removed, added) questions."""
        from learnalign_pipeline.core.data.arithmetic import generate_problems

        lines = self.pool.read_text().splitlines(keepends=True)
        added = generate_problems(add, seed=seed)
        self.pool.write_text("".join(lines[remove:]) + jsonl(added))
        return [json.loads(line)["question"] for line in lines[:remove]], [p.prompt for p in added]


def bootstrap(home: LoopHome, run_config: dict) -> None:
    """Materialize the whole pipeline once in this process, on the home's instance (which also creates its storage
    before any service starts: a daemon and a reader creating a fresh sqlite instance at once race)."""
    from learnalign_pipeline.definitions import defs

    saved = dict(os.environ)
    os.environ.update(home.env())
    try:
        with dg.DagsterInstance.get() as instance:
            job = defs().resolve_job_def("learnalign_job")
            result = job.execute_in_process(
                run_config={**run_config, "loggers": {"console": {"config": {"log_level": "ERROR"}}}},
                instance=instance,
            )
            assert result.success, "bootstrap run failed"
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Service:
    """A subprocess in its own session (so Ctrl-C can be sent to it and its children as a terminal would)."""

    def __init__(self, command: list[str], env: dict, log: Path, cwd: Path = ROOT):
        self.log_path = log
        self._log = open(log, "w")
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def interrupt(self, timeout: float = 90) -> int:
        """Ctrl-C (SIGINT to the process group), then wait; SIGKILL if it does not end."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


def wait_for(predicate, timeout: float, what: str, service: Service | None = None, poll: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if service is not None and not service.alive():
            raise RuntimeError(f"{what}: the service exited ({service.process.returncode}); see {service.log_path}")
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def wait_for_http(url: str, service: Service, timeout: float = 240) -> None:
    def answers():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(answers, timeout, f"{url} answering", service, poll=1)


def materializations(instance: dg.DagsterInstance, key: str, after: float = 0.0) -> list:
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1000).records
    return [r for r in records if r.timestamp > after]


def observations(instance: dg.DagsterInstance, key: str, after: float = 0.0) -> list:
    records = instance.fetch_observations(dg.AssetKey(key), limit=1000).records
    return [r for r in records if r.timestamp > after]


def in_progress(instance: dg.DagsterInstance) -> list:
    return [r for r in instance.get_runs() if not r.is_finished]


def settled_subset(instance: dg.DagsterInstance, after: float):
    """The selected_subset materialization built, after `after`, from the latest raw_problems version, once no run
    is in progress; else None."""
    raw = materializations(instance, "raw_problems", after)
    subsets = materializations(instance, "selected_subset", after)
    if not raw or not subsets or in_progress(instance):
        return None
    raw_version = raw[0].asset_materialization.tags["dagster/data_version"]
    latest = subsets[0].asset_materialization
    return subsets[0] if latest.tags.get("dagster/input_data_version/raw_problems") == raw_version else None


def run_summary(instance: dg.DagsterInstance, after: float) -> list[dict]:
    """Every run created after `after`: status, what it materialized or observed, and its tags, oldest first."""
    rows = []
    for record in reversed(instance.get_run_records()):
        if record.create_timestamp.timestamp() <= after:
            continue
        run = record.dagster_run
        events = instance.all_logs(run.run_id)
        done = sorted(
            {
                e.dagster_event.asset_key.to_user_string()
                for e in events
                if e.dagster_event
                and e.dagster_event.event_type_value in ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION")
            }
        )
        rows.append(
            {
                "run_id": run.run_id,
                "status": run.status.value,
                "job": run.job_name,
                "assets": done,
                "loop": run.tags.get("learnalign/loop", ""),
                "created": record.create_timestamp.timestamp(),
                "ended": record.end_time,
            }
        )
    return rows


def python_bin(name: str) -> str:
    """A console script of this interpreter's environment (no activated venv needed)."""
    return str(Path(sys.executable).with_name(name))
