"""`learnalign`: run the pipeline against a project-local Dagster instance, open the UI, print results.

    learnalign demo     materialize every asset on the embedded default, then print the benchmark table
    learnalign dev      the Dagster UI (dg dev) on the same instance, to inspect runs, lineage and metadata
    learnalign report   the latest benchmark table
    learnalign compare  every selection method x budget x seed on the demo's materialized pool (after `demo`),
                        then print the comparison table (asset `comparison_report`)
    learnalign curriculum  GradAlign's adaptive curriculum, one selection and one checkpoint per round (after `demo`)
    learnalign dataset  pool|benchmark PATH [--format ...]: the file the daily loop reads (also `show`, `clear`)
    learnalign observe  observe the dataset files now; learnalign train-now: open the training window now
    learnalign experiment  the pre-registered selection experiment (its own pool and policy; over an hour on 2
                        CPU cores), then print its contrasts against Random (asset `experiment_report`)

`--preset NAME` picks a run config (presets.py); `--config run.yaml` merges your YAML (ops/resources) over it and
is checked before anything runs. A preset that trains your model reads its path from the file
(ops.pretrained_policy.config.model_path) or LEARNALIGN_MODEL_PATH.

State lives in `LEARNALIGN_HOME` (default ./.learnalign): `dagster_home/` (run history, so `dev` shows what
`demo` ran), `artifacts/`, `row_cache/`, `results.duckdb` and `logs/` (one file per run: the full event log).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import cli_loop
from .cli_loop import LOOP_COMMANDS
from .paths import project_home

DAGSTER_YAML = """\
# Written by `learnalign`; edit freely.
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1  # accelerator steps (pool "gpu") run one at a time: one GPU on this machine
run_monitoring:  # with the daemon (`learnalign dev`): give back the pool slots of runs that ended, e.g. terminated
  enabled: true
  free_slots_after_run_end_seconds: 60
"""

# On a small machine the per-step process start (importing torch and transformers, ~8 s) would cost more than
# most steps; run the CLI's jobs in one process. `dg launch --job learnalign_job` uses the multiprocess executor.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


def prepare_environment() -> Path:
    """Point LEARNALIGN_HOME and DAGSTER_HOME at persistent project-local directories."""
    home = project_home()
    os.environ["LEARNALIGN_HOME"] = str(home)
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(home / "dagster_home")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return home


def parallel_execution(processes: int) -> dict:
    """Run config for `processes` steps at once: the multiprocess executor (steps forked from a server that imported
    the heavy modules once), each step's torch limited to its share of the cores so they do not oversubscribe."""
    if processes < 1:
        raise ValueError(f"--parallel {processes}: must be >= 1")
    from .lib.executors import preload_modules

    threads = max(1, (os.cpu_count() or 1) // processes)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # inherited by the step processes
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the step processes' library warnings stay off the console
    start = {"forkserver": {"preload_modules": preload_modules()}}
    return {"execution": {"config": {"multiprocess": {"max_concurrent": processes, "start_method": start}}}}


def run_job(
    name: str, run_config: dict | None = None, assets: list[str] | None = None, pool_limit: int | None = None
) -> bool:
    """Execute a job of the code location (or only `assets` of it) in this process, printing its stages as they
    start and end. Runs left behind by killed processes are recovered first, so none of them holds a pool slot.
    `pool_limit` sets the `gpu` pool's slots for this run (restored afterwards), so that many accelerator steps
    can run at once."""
    import dagster as dg

    from .definitions import job_named, reconstructable_job
    from .lib.config import SettingsError
    from .lib.console import QUIET_LOGGERS, followed_run
    from .lib.preflight import preflight
    from .lib.runs import owner_tags, recover_dead_runs, sweep_leftovers

    config = {**IN_PROCESS, **QUIET_LOGGERS, **(run_config or {})}
    try:  # before any step runs: Dagster itself would build a stage's config only when that stage starts
        preflight(job_named(name), config)
    except SettingsError as error:
        print(f"{name} not started: {error}", file=sys.stderr)
        return False
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance, followed_run(project_home() / "logs") as (tags, follower):
        recover_dead_runs(instance)
        sweep_leftovers(instance, project_home() / "artifacts")
        with gpu_pool_slots(instance, pool_limit):
            result = dg.execute_job(
                reconstructable_job(name),
                instance=instance,
                run_config=config,
                tags={**tags, **owner_tags()},
                asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
            )
        if result.success:
            sweep_leftovers(instance, project_home() / "artifacts")  # this run's step outputs
    took = time.perf_counter() - started
    verdict = "succeeded" if result.success else "failed; inspect it with `learnalign dev`"
    print(
        f"{name} {verdict} in {int(took // 60)} min {took % 60:02.0f} s (run {result.run_id}, log {follower.log_path})"
    )
    return result.success


@contextlib.contextmanager
def gpu_pool_slots(instance, slots: int | None):
    """The `gpu` pool holds `slots` slots inside the block, its previous count after it (None: left alone)."""
    from .lib.tags import GPU_POOL

    storage = instance.event_log_storage
    if slots is None or GPU_POOL is None or not storage.supports_global_concurrency_limits:
        yield
        return
    previous = storage.get_concurrency_info(GPU_POOL).slot_count
    storage.set_concurrency_slots(GPU_POOL, slots)
    try:
        yield
    finally:
        storage.set_concurrency_slots(GPU_POOL, previous)


def latest_metadata(asset: str) -> dict | None:
    """The metadata of an asset's latest materialization on this project's instance, or None."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return None if event is None or event.asset_materialization is None else event.asset_materialization.metadata


def latest_benchmark_table() -> str:
    import dagster as dg

    from .defs.evaluation.assets import TABLE_COLUMNS
    from .lib.io_managers import load_latest
    from .lib.outputs import markdown_table

    metadata = latest_metadata("benchmark_results")
    if metadata is None:
        return "benchmark_results has not been materialized yet: run `learnalign demo`"
    with dg.DagsterInstance.get() as instance:  # read under this home's artifact root, wherever it was written
        table = load_latest(instance, dg.AssetKey("benchmark_results"), project_home() / "artifacts")
    lines = [f"trained - warmup: {metadata['trained_minus_warmup_points'].value:+.1f} points (greedy)"]
    if "sampled_accuracy_trained" in metadata:
        sampled = {p: metadata[f"sampled_accuracy_{p}"].value for p in ("warmup", "trained")}
        lines.append(f"trained - warmup: {100 * (sampled['trained'] - sampled['warmup']):+.1f} points (sampled)")
    return (
        markdown_table(table.select([c for c in [*TABLE_COLUMNS, "backend"] if c in table.columns]))
        + "\n\n"
        + "\n".join(lines)
    )


def latest_comparison_table() -> str:
    metadata = latest_metadata("comparison_report")
    if metadata is None:
        return "comparison_report has not been materialized yet: run `learnalign compare`"
    return f"{metadata['table_a'].value}\n\nplot: {metadata['plot_path'].value}"


def latest_experiment_table() -> str:
    metadata = latest_metadata("experiment_report")
    if metadata is None:
        return "experiment_report has not been materialized yet: run `learnalign experiment`"
    return f"{metadata['contrasts'].value}\n\nplot: {metadata['plot_path'].value}"


def dev(extra: list[str], recover_every_s: float = 30.0) -> int:
    """`dg dev` from this interpreter's environment (no activated venv needed). While it runs, runs launched from
    the UI or by automation whose process died are recovered every `recover_every_s`. Ctrl-C reaches only this
    process (dg runs in a session of its own), which asks dg once to stop: dg then shuts the webserver, the daemon
    and the code servers down in order. Sent to all of them at once, as a terminal does, they race (a code server
    cleaning up while the daemon still calls it prints tracebacks), and in-flight runs die as failures; here they
    finish."""
    import dagster as dg

    from .lib.console import QUIET_ENV
    from .lib.runs import recover_dead_runs

    for key, value in QUIET_ENV.items():  # no weight-loading bars from the daemon's run workers
        os.environ.setdefault(key, value)
    dg_cli = Path(sys.executable).with_name("dg")
    command = [str(dg_cli) if dg_cli.exists() else "dg", "dev", *extra]
    process = subprocess.Popen(command, start_new_session=True)
    stopping = False

    def stop(signum, frame) -> None:  # Ctrl-C, kill, or the terminal closing: ask dg once, then wait for it
        nonlocal stopping
        if not stopping:
            print("stopping the Dagster services (runs in flight finish in the background)...", flush=True)
            process.send_signal(signal.SIGINT)
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # set explicitly: an inherited SIG_IGN would
        signal.signal(signum, stop)  # otherwise leave dg running alone in its session
    with dg.DagsterInstance.get() as instance:
        while process.poll() is None:
            if not stopping:
                recover_dead_runs(instance, say=lambda line: print(f"learnalign: {line}", flush=True))
            try:
                process.wait(timeout=recover_every_s)
            except subprocess.TimeoutExpired:
                pass
    return 0 if stopping else process.returncode


def disk_full(error: BaseException | None) -> bool:
    """Is a full disk behind this error? ENOSPC anywhere in its chain, or SQLite's words for it."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "database or disk is full" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except Exception as error:
        if not disk_full(error):
            raise
        # A full disk is the machine's state, not a bug: one line, not a library's traceback.
        home = os.environ.get("LEARNALIGN_HOME", "LEARNALIGN_HOME")
        detail = (str(error).splitlines() or [""])[0][:200]
        print(
            f"learnalign: the disk under {home} is full ({detail}). Free space, then run "
            "the same command again: it recovers the stopped run and keeps every published artifact.",
            file=sys.stderr,
        )
        return 1


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="learnalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command", choices=["demo", "dev", "report", "compare", "curriculum", "experiment", *LOOP_COMMANDS]
    )
    parser.add_argument("--preset", default="demo", help="run-config preset (learnalign_pipeline/presets.py)")
    parser.add_argument(
        "--config",
        default=None,
        metavar="RUN.YAML",
        help="a run config (ops/resources, as a preset) merged over the preset; checked before the run starts",
    )
    parser.add_argument(
        "--png-dir", default=None, help="`compare`, `experiment`: also copy the plot into this directory"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="`experiment`: run N seed shards at once (multiprocess executor, `gpu` pool limit N for the run, "
        "torch threads = cores / N); 1: one process",
    )
    args, rest = parser.parse_known_args(argv)
    prepare_environment()
    if args.command == "dev":
        return dev(rest)
    if args.command in LOOP_COMMANDS:
        return cli_loop.main(args.command, rest)
    if args.command == "report":
        print(latest_benchmark_table())
        return 0
    from .lib.console import quiet_libraries
    from .presets import RunFileError
    from .presets import run_config as preset_run_config

    quiet_libraries()
    try:
        run_config = preset_run_config(args.preset, args.config)
    except RunFileError as error:
        print(f"learnalign {args.command} not started: {error}", file=sys.stderr)
        return 2
    if args.command == "demo":
        if not run_job("learnalign_job", run_config):
            return 1
        print(latest_benchmark_table())
        return 0
    report = {"compare": "comparison_report", "experiment": "experiment_report"}.get(args.command)
    if args.png_dir and report:
        ops = {**run_config.get("ops", {}), report: {"config": {"png_dir": args.png_dir}}}
        run_config = {**run_config, "ops": ops}
    pool_limit = None
    if args.command == "experiment" and args.parallel > 1:
        run_config = {**run_config, **parallel_execution(args.parallel)}
        pool_limit = args.parallel
    job = {
        "compare": "selection_comparison_job",
        "curriculum": "gradalign_curriculum_job",
        "experiment": "selection_experiment_job",
    }[args.command]
    if not run_job(job, run_config, pool_limit=pool_limit):
        return 1
    if args.command == "compare":
        print(latest_comparison_table())
    if args.command == "experiment":
        print(latest_experiment_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
