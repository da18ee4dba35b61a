"""Runs whose process died, and what they leave behind.

A run killed with SIGKILL (an OOM kill, a lost node, Ctrl-\\) never records its end: it stays STARTED and keeps
the pool slots its steps claimed, so with the `gpu` pool limited to 1 every later run waits forever (and a run
waiting for a slot ignores Ctrl-C in dagster 1.13). Marking the run failed does not give the slots back.

Dagster's own run monitoring cannot see these runs here: it needs the daemon, and for a STARTED run it asks the
run launcher whether the worker lives, which only the k8s, Docker and ECS launchers can answer. Runs the CLI
executes in its own process have no launcher at all. So the CLI checks before each run (and `learnalign dev`
every 30 s): a run is dead when every process recorded for it is gone from this machine, or was replaced by
another process with the same pid. Processes come from the owner tags the CLI puts on its runs and from the pids
Dagster records in engine events (run worker, in-process executor, step subprocesses); the latter only count on
the project-local SQLite instance, whose runs all execute on this machine. A dead run is marked failed (canceled
if it was canceling) with the reason, its slots and pending claims are freed, and the console says so. A run
that is alive, or whose processes cannot be checked from here (another machine), is left alone and named.

Leftovers of ended runs are removed when that is safe: the step outputs under `<artifacts>/.steps/<run id>/` of
runs that succeeded or no longer exist (a failed run keeps them: re-executing it from failure reads them), and
staging directories under `<artifacts>/.staging/` whose process is gone.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
from dagster._core.storage.runs import SqliteRunStorage

HOST_TAG, PID_TAG, STARTED_TAG = "learnalign/host", "learnalign/pid", "learnalign/process_started"
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# Engine events whose metadata `pid` is a process that executes (part of) the run.
PID_EVENTS = {dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.STEP_WORKER_STARTED}
SAME_PROCESS_SECONDS = 1.0  # start-time tolerance: a process created later than this is another one


def this_host() -> str:
    return socket.gethostname()


def owner_tags() -> dict[str, str]:
    """Run tags naming the process that executes a run in-process (the CLI's runs)."""
    me = psutil.Process()
    return {HOST_TAG: this_host(), PID_TAG: str(me.pid), STARTED_TAG: f"{me.create_time():.3f}"}


@dataclass(frozen=True)
class RecordedProcess:
    pid: int
    not_after: float  # the process was running at this time (its start time, or a time it wrote an event)
    exact: bool  # `not_after` is the process's start time (owner tags), not just a moment it was alive

    def alive(self) -> bool:
        try:
            started = psutil.Process(self.pid).create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:  # exists, owned by someone else: cannot be sure it is not ours
            return True
        if self.exact:
            return abs(started - self.not_after) <= SAME_PROCESS_SECONDS
        return started <= self.not_after + SAME_PROCESS_SECONDS  # created after it was seen alive: pid reused


def _local_instance(instance: dg.DagsterInstance) -> bool:
    """Whether every run of the instance executes on this machine: the project-local SQLite storage."""
    return isinstance(instance.run_storage, SqliteRunStorage)


def run_processes(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[RecordedProcess] | None:
    """The processes recorded for `run` on this machine, or None when they cannot be checked from here."""
    host = run.tags.get(HOST_TAG)
    if host is not None and host != this_host():
        return None
    processes = []
    if host is not None and PID_TAG in run.tags:
        processes.append(RecordedProcess(int(run.tags[PID_TAG]), float(run.tags[STARTED_TAG]), exact=True))
    if host is not None or _local_instance(instance):
        for record in instance.get_records_for_run(run.run_id, of_type=PID_EVENTS, limit=1000).records:
            metadata = getattr(record.event_log_entry.dagster_event.event_specific_data, "metadata", None) or {}
            if "pid" in metadata:
                pid = int(metadata["pid"].value)
                processes.append(RecordedProcess(pid, record.event_log_entry.timestamp, exact=False))
    return processes or None


def _verdict(processes: list[RecordedProcess] | None) -> str:
    if processes is None:
        return "unknown"
    return "alive" if any(p.alive() for p in processes) else "dead"


def _held_pools(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    """Run id -> the pools in which it holds a slot."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    held: dict[str, list[str]] = {}
    for info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).values():
        for slot in info.claimed_slots:
            held.setdefault(slot.run_id, []).append(info.concurrency_key)
    return held


def _describe(run: dg.DagsterRun, pools: list[str]) -> str:
    holding = f", holding the {', '.join(sorted(set(pools)))} slot" if pools else ""
    return f"run {run.run_id[:8]} ({run.job_name}, {run.status.value.lower()}{holding})"


def recover_dead_runs(instance: dg.DagsterInstance, say: Callable[[str], None] = print) -> list[str]:
    """Mark the unfinished runs whose processes are gone as failed and free their pool slots; free the slots still
    held by runs that already ended. Says one line per run it touched and per run it leaves holding a slot.
    Returns the ids of the runs it recovered or freed."""
    storage = instance.event_log_storage
    held = _held_pools(instance)
    waiting = storage.get_concurrency_run_ids() if storage.supports_global_concurrency_limits else set()
    recovered, unfinished = [], set()
    for record in instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED)):
        run = record.dagster_run
        unfinished.add(run.run_id)
        verdict = _verdict(run_processes(instance, run))
        if verdict == "dead":
            reason = "every process that executed it is gone (killed, or its machine restarted)"
            if run.status == dg.DagsterRunStatus.CANCELING:
                instance.report_run_canceled(run, f"learnalign: {reason}")
            else:
                instance.report_run_failed(run, f"learnalign: {reason}")
            if storage.supports_global_concurrency_limits:
                storage.free_concurrency_slots_for_run(run.run_id)
            say(f"{_describe(run, held.get(run.run_id, []))}: {reason}; marked it failed and freed its pool slots")
            recovered.append(run.run_id)
        elif held.get(run.run_id):
            where = "is running" if verdict == "alive" else "may be running on another machine"
            say(
                f"{_describe(run, held[run.run_id])} {where}; steps in that pool wait for it. If it is dead, "
                f"terminate it in the UI (`learnalign dev`, Runs, {run.run_id[:8]}, Terminate)"
            )
    # Runs that ended (e.g. terminated in the UI) but still hold slots: Dagster frees these only with the daemon
    # (run_monitoring.free_slots_after_run_end_seconds).
    for run_id in sorted((set(held) | waiting) - unfinished):
        run = instance.get_run_by_id(run_id)
        if run is not None and _verdict(run_processes(instance, run)) == "alive":
            continue  # marked ended while a step process still works: its slot is in use
        storage.free_concurrency_slots_for_run(run_id)
        if held.get(run_id):
            status = run.status.value.lower() if run else "deleted"
            say(f"run {run_id[:8]} ({status}) still held the {', '.join(held[run_id])} slot; freed it")
        recovered.append(run_id)
    return recovered


# ---- leftovers on disk ---------------------------------------------------------------------------------------


def process_token() -> str:
    """`<host>-<pid>-<start time>`: names scratch files by the process that owns them, so a sweep can tell an
    abandoned one (its process is gone) from one in use."""
    me = psutil.Process()
    return f"{this_host()}-{me.pid}-{int(me.create_time())}"


def token_alive(token: str) -> bool:
    """Whether the process a `process_token` names is still running; True when that cannot be told from here."""
    parts = token.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return True  # not a token (e.g. an older uuid-named directory): leave it
    host, pid, started = parts
    return host != this_host() or RecordedProcess(int(pid), float(started), exact=True).alive()


def staging_name() -> str:
    return f"{process_token()}-{uuid.uuid4().hex}"


def _staging_owner(name: str) -> str:
    return name.rsplit("-", 1)[0]


def sweep_leftovers(instance: dg.DagsterInstance, artifacts: Path, say: Callable[[str], None] = print) -> dict:
    """Remove step outputs of runs that succeeded or no longer exist, and staging directories whose process is
    gone. Returns counts."""
    removed = {"step_outputs": 0, "staging": 0}
    steps = Path(artifacts) / ".steps"
    for directory in _children(steps):
        run = instance.get_run_by_id(directory.name)
        if run is None or run.status == dg.DagsterRunStatus.SUCCESS:
            shutil.rmtree(directory, ignore_errors=True)
            removed["step_outputs"] += 1
    for directory in _children(Path(artifacts) / ".staging"):
        if not token_alive(_staging_owner(directory.name)):
            shutil.rmtree(directory, ignore_errors=True)
            removed["staging"] += 1
    if removed["staging"]:
        say(f"removed {removed['staging']} staging directories left by killed runs")
    return removed


def _children(directory: Path) -> Iterable[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []
