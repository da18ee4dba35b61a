"""The launched training script: `python -m learnalign_pipeline.lib.trl_launch LAUNCH.json`, or one
process per GPU with `accelerate launch [--config_file fsdp.yaml] -m learnalign_pipeline.lib.trl_launch
LAUNCH.json` (the asset runs accelerate's launcher through this module's `--accelerate` entry, so that a killed step
takes the launcher, and with it every rank, down too).

Every process trains the launch's runs in order (`trl_engine.train_run`). When Dagster started it (Pipes), the main
process reports to the asset: one log line and one message per step, and a summary per run; the other processes
stay silent (a second Pipes writer would open and close the session again). Each process's own output (library
logs, warnings) goes to `<log_dir>/rank<r>.log` when the launch names a log directory, so the console stays quiet.
Run by hand, it prints one line per step. It lives in lib/ because it is the Pipes side of the launch (core/ never
imports the orchestrator); it needs only the `dagster-pipes` package, and only when Dagster launched it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Every torch.load in a training process is weights-only, whatever the library asks for (torch reads this per call):
# a checkpoint that would need a real unpickle fails instead of running code.
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental in TRL 1.16


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies, so a killed asset step (or launcher) leaves no
    training process behind. Used as `preexec_fn` by the launcher and called by every rank. No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _redirect_output(log_dir: str | None, rank: int) -> None:
    if not log_dir:
        return
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    log = os.open(Path(log_dir) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)


def _pipes(rank: int):
    """The Pipes context on the main process of a launch Dagster started, else None."""
    if rank != 0 or "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return None
    from dagster_pipes import open_dagster_pipes

    return open_dagster_pipes()


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] == "--accelerate":  # the multi-process launcher, dying with whoever started it
        die_with_parent()
        from accelerate.commands.launch import launch_command, launch_command_parser

        launch_command(launch_command_parser().parse_args(argv[2:]))
        return
    if len(argv) != 2:
        raise SystemExit(
            f"usage: {argv[0]} LAUNCH.json | --accelerate ACCELERATE_LAUNCH_ARGS -m {__name__} LAUNCH.json"
        )
    die_with_parent()
    if os.getppid() == 1:  # the parent died before the line above: nothing is left to train for
        raise SystemExit("the launching process is gone")
    rank = int(os.environ.get("RANK", "0"))
    log_dir = os.environ.get("LEARNALIGN_TRAIN_LOG_DIR")
    _redirect_output(log_dir, rank)
    pipes = _pipes(rank)
    try:
        _train(Path(argv[1]), pipes)
    except BaseException as error:
        if pipes is not None:
            pipes.log.error(f"training failed: {type(error).__name__}: {error}")
        raise
    finally:
        if pipes is not None:
            pipes.close()


def _train(launch_path: Path, pipes) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    from ..core.compute import ComputeConfig
    from ..core.training.config import TrainerConfig
    from ..core.training.trl_engine import Launch, train_run

    launch = Launch.read(launch_path)
    trainer, compute = TrainerConfig(**launch.trainer), ComputeConfig(**launch.compute)
    for index, run in enumerate(launch.runs):
        steps = run.grpo["steps"]

        def report(record: dict, index=index, steps=steps) -> None:
            line = f"run {index + 1}/{len(launch.runs)} GRPO step {record['step'] + 1}/{steps}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in record.items() if k != "step"
            )
            if pipes is None:
                print(line, flush=True)
                return
            if (record["step"] + 1) % max(1, steps // 10) == 0 or record["step"] + 1 == steps:
                pipes.log.info(line)  # the run's event log: a line every tenth of the way
            pipes.report_custom_message({"kind": "step", "run": index, **record})

        def warn(message: str) -> None:
            if pipes is not None:
                pipes.log.warning(message)
            else:
                print(message, flush=True)

        summary = train_run(run, trainer, compute, report, warn)
        if pipes is not None:
            pipes.report_custom_message({"kind": "done", "run": index, **summary})
        elif rank_is_main():
            print(f"run {index + 1}/{len(launch.runs)} done: {summary}", flush=True)


def rank_is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


if __name__ == "__main__":
    main(sys.argv)
