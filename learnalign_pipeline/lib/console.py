"""The console for people: a run prints one line when each stage starts and one when it ends (duration and key
figure), failures with their message, and nothing from the libraries. The full event log stays in the run (the
UI shows it) and in a log file under LEARNALIGN_HOME.

A background thread follows the run's event log on the instance while the job executes in the main thread, so
it works the same for any executor; long steps draw their own progress bars (`lib/progress.py`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from tqdm import tqdm

from .outputs import SUMMARY_KEY

CONSOLE_TAG = "learnalign/console"
# Dagster's own console logger stays silent; the run's events reach people through this module instead.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


# Read by the libraries at import, in this process and every process it starts (`learnalign dev`'s run workers).
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    # vLLM's CPU build warns on every engine start (no tcmalloc, no Triton, eager mode): advice, not errors
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # torch's C++ warnings (the CPU worker's NUMA binding notice)
    # Python warnings in the processes steps start (vLLM's engine, training launches); this process filters its own
    "PYTHONWARNINGS": "ignore",
}


def quiet_libraries() -> None:
    """No warnings, weight-loading bars or info logs from the libraries on the console (they stay in the UI)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore")
    for name in ("dagster", "transformers", "vllm", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else f"{int(value // 60)} min {value % 60:02.0f} s"


def _node(step_key: str | None) -> str:
    """The stage a step belongs to: the top-level node of its step key (a sharded asset's steps share it)."""
    return (step_key or "").split(".")[0].split("[")[0]


class RunFollower:
    """Prints the stage lines of one run (found by its console tag) and copies every event to a log file."""

    def __init__(self, instance: dg.DagsterInstance, token: str, log_dir: Path, write=tqdm.write):
        self.instance, self.token, self.log_dir, self.write = instance, token, log_dir, write
        self.run_id: str | None = None
        self.log_path: Path | None = None
        self.started: dict[str, float] = {}
        self._cursor = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._drain()  # events written after the last poll

    def _find_run(self) -> None:
        records = self.instance.get_run_records(filters=dg.RunsFilter(tags={CONSOLE_TAG: self.token}), limit=1)
        if records:
            self.run_id = records[0].dagster_run.run_id
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self.log_dir / f"{self.run_id}.log"
            self.write(f"run {self.run_id} ({records[0].dagster_run.job_name}); full log: {self.log_path}")

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._drain()
            self._stop.wait(0.5)

    def _drain(self) -> None:
        if self.run_id is None:
            self._find_run()
            if self.run_id is None:
                return
        while True:
            result = self.instance.get_records_for_run(self.run_id, cursor=self._cursor, limit=500)
            self._cursor = result.cursor
            if not result.records:
                return
            with open(self.log_path, "a") as log:
                for record in result.records:
                    self._handle(record.event_log_entry, log)
            if not result.has_more:
                return

    def _handle(self, entry, log) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(entry.timestamp))
        event = entry.dagster_event
        kind = event.event_type_value if event else "LOG"
        log.write(f"{stamp} {logging.getLevelName(entry.level)} {entry.step_key or '-'} {kind} {entry.user_message}\n")
        if event is None:
            return
        node = _node(entry.step_key)
        if kind == "STEP_START" and node not in self.started:
            self.started[node] = entry.timestamp
            self.write(f"▶ {node}")
        elif kind == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            summary = materialization.metadata.get(SUMMARY_KEY)
            took = entry.timestamp - self.started.get(node, entry.timestamp)
            self.write(
                f"✓ {materialization.asset_key.to_user_string()} ({_seconds(took)})"
                + (f": {summary.value}" if summary else "")
            )
        elif kind == "ASSET_OBSERVATION":
            self.write(f"✓ {event.event_specific_data.asset_observation.asset_key.to_user_string()} observed")
        elif kind == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            mark = "✓" if evaluation.passed else "✗"
            self.write(f"{mark} {node}: {evaluation.description}")
        elif kind == "STEP_FAILURE":
            error = event.event_specific_data.error
            cause = error.cause or error
            self.write(
                f"✗ {entry.step_key} failed: {cause.message.strip().splitlines()[-1] if cause.message else error.message}"
            )


@contextmanager
def followed_run(log_dir: Path):
    """Tags for a run whose stage lines the console prints while the body executes it."""
    token = uuid.uuid4().hex
    with dg.DagsterInstance.get() as reader:  # its own connection: the follower reads while the run writes
        follower = RunFollower(reader, token, log_dir)
        follower.start()
        try:
            yield {CONSOLE_TAG: token}, follower
        finally:
            follower.stop()
