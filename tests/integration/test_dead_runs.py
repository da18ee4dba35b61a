"""Runs whose process died, on the instance `learnalign` writes (the `gpu` pool limited to one step), with real
processes killed by SIGKILL mid-step (`tests/helpers/pooled_job.py`: one pooled step that sleeps):

- the killed run stays STARTED and keeps the only `gpu` slot; marking it failed does not give the slot back
  (that is Dagster's behaviour, checked here so that a change in it is noticed);
- `lib/runs.py` marks it failed, frees the slot and says so, for a run the CLI started (owner tags) and for one
  launched elsewhere (only Dagster's engine events record its process); a new pooled run then finishes;
- a live run is never touched, only named; a run that ended but still holds a slot gets it freed;
- leftovers: staging directories of dead processes and step outputs of succeeded or deleted runs are removed,
  the rest is kept.
"""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import psutil
import pytest

from learnalign_pipeline.cli import DAGSTER_YAML
from learnalign_pipeline.lib.runs import recover_dead_runs, staging_name, sweep_leftovers, this_host

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "tests" / "helpers" / "pooled_job.py"


@pytest.fixture()
def dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def start_pooled_run(sleep_s: float, owner_tags: bool) -> subprocess.Popen:
    """A pooled run in a child process, returned once its step holds the `gpu` slot."""
    flags = ["--owner-tags"] if owner_tags else []
    child = subprocess.Popen(
        [sys.executable, str(HELPER), str(sleep_s), *flags], env=_env(), stdout=subprocess.PIPE, text=True
    )
    for line in child.stdout:
        if line.startswith("STEP_RUNNING"):
            return child
    raise AssertionError(f"the pooled run ended before its step ran (exit code {child.wait()})")


def kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL


def the_started_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    runs = [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))]
    assert len(runs) == 1
    return runs[0]


def gpu_holders(instance: dg.DagsterInstance) -> list[str]:
    return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots]


@pytest.mark.parametrize("owner_tags", [True, False], ids=["started_by_the_cli", "launched_elsewhere"])
def test_a_killed_run_is_marked_failed_its_slot_freed_and_the_next_run_finishes(dagster_home, owner_tags):
    kill(start_pooled_run(600, owner_tags))
    with dg.DagsterInstance.get() as instance:
        dead = the_started_run(instance)
        assert gpu_holders(instance) == [dead.run_id]  # the wedge: a dead run keeps the only slot

        said: list[str] = []
        assert recover_dead_runs(instance, say=said.append) == [dead.run_id]
        assert said == [
            f"run {dead.run_id[:8]} (pooled_job, started, holding the gpu slot): every process that executed it is "
            "gone (killed, or its machine restarted); marked it failed and freed its pool slots"
        ]
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        failure = instance.get_records_for_run(dead.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        assert "every process that executed it is gone" in failure[0].event_log_entry.message
        assert gpu_holders(instance) == [] and not instance.event_log_storage.get_concurrency_run_ids()
        assert recover_dead_runs(instance, say=said.append) == [] and len(said) == 1  # nothing left to do

    done = subprocess.run([sys.executable, str(HELPER), "0"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("True"), done.stdout + done.stderr[-2000:]


def test_a_live_run_is_left_alone_and_named(dagster_home):
    child = start_pooled_run(600, owner_tags=True)
    try:
        with dg.DagsterInstance.get() as instance:
            live = the_started_run(instance)
            said: list[str] = []
            assert recover_dead_runs(instance, say=said.append) == []
            assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.STARTED
            assert gpu_holders(instance) == [live.run_id]
            assert len(said) == 1 and said[0].startswith(f"run {live.run_id[:8]} (pooled_job, started, holding the gpu")
            assert "is running; steps in that pool wait for it" in said[0]
    finally:
        kill(child)


def test_a_run_marked_failed_by_hand_gets_its_slot_back(dagster_home):
    kill(start_pooled_run(600, owner_tags=True))
    with dg.DagsterInstance.get() as instance:
        dead = the_started_run(instance)
        instance.report_run_failed(dead, "marked failed by hand")
        assert gpu_holders(instance) == [dead.run_id]  # Dagster does not free slots when a run is marked failed
        said: list[str] = []
        assert recover_dead_runs(instance, say=said.append) == [dead.run_id]
        assert said == [f"run {dead.run_id[:8]} (failure) still held the gpu slot; freed it"]
        assert gpu_holders(instance) == []


@dg.op
def succeed() -> None:
    pass


@dg.op
def fail() -> None:
    raise ValueError("failed on purpose")


def _run_id(instance: dg.DagsterInstance, op) -> str:
    job = dg.GraphDefinition(name=f"{op.name}_job", node_defs=[op]).to_job()
    return job.execute_in_process(instance=instance, raise_on_error=False).run_id


def test_leftovers_of_dead_processes_and_finished_runs_are_removed_and_the_rest_kept(tmp_path, dagster_home):
    artifacts = tmp_path / "artifacts"
    ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    ended_token = f"{this_host()}-{ended.pid}-{int(psutil.Process(ended.pid).create_time())}"
    ended.wait()
    staging = {
        "dead": artifacts / ".staging" / f"{ended_token}-{uuid.uuid4().hex}",
        "mine": artifacts / ".staging" / staging_name(),
        "other_host": artifacts / ".staging" / f"gpu-node-7-{ended.pid}-1700000000-{uuid.uuid4().hex}",
        "legacy": artifacts / ".staging" / uuid.uuid4().hex,
    }
    with dg.DagsterInstance.get() as instance:
        runs = {
            "succeeded": _run_id(instance, succeed),
            "failed": _run_id(instance, fail),
            "deleted": str(uuid.uuid4()),
        }
        steps = {name: artifacts / ".steps" / run_id / "step" for name, run_id in runs.items()}
        for directory in [*staging.values(), *steps.values()]:
            directory.mkdir(parents=True)
            (directory / "file").write_text("x")
        said: list[str] = []
        assert sweep_leftovers(instance, artifacts, say=said.append) == {"step_outputs": 2, "staging": 1}
    assert said == ["removed 1 staging directories left by killed runs"]
    assert [name for name, d in staging.items() if d.exists()] == ["mine", "other_host", "legacy"]
    assert [name for name, d in steps.items() if d.exists()] == ["failed"]  # re-execution from failure reads them
