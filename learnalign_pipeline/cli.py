"""`learnalign`: run the pipeline against a project-local Dagster instance, open the UI, print results.

    learnalign demo     materialize every asset on the embedded default, then print the benchmark table
    learnalign dev      the Dagster UI (dg dev) on the same instance, to inspect runs, lineage and metadata
    learnalign report   the latest benchmark table
    learnalign compare  every selection method x budget x seed on the demo's materialized pool (after `demo`),
                        then print the comparison table (asset `comparison_report`)
    learnalign curriculum  GradAlign's adaptive curriculum, one selection and one checkpoint per round (after `demo`)

State lives in `LEARNALIGN_HOME` (default ./.learnalign): `dagster_home/` (run history, so `dev` shows what
`demo` ran), `artifacts/` and `results.duckdb`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

DAGSTER_YAML = """\
# Written by `learnalign`; edit freely.
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1  # accelerator steps (pool "gpu") run one at a time: one GPU on this machine
"""


def prepare_environment() -> Path:
    """Point LEARNALIGN_HOME and DAGSTER_HOME at persistent project-local directories."""
    home = Path(os.environ.get("LEARNALIGN_HOME", Path.cwd() / ".learnalign")).resolve()
    os.environ["LEARNALIGN_HOME"] = str(home)
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(home / "dagster_home")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return home


def learnalign_job():
    """The whole-graph job, importable at module scope so Dagster can rebuild it in step subprocesses."""
    from .definitions import defs

    return defs().resolve_job_def("learnalign_job")


def selection_comparison_job():
    from .definitions import defs

    return defs().resolve_job_def("selection_comparison_job")


def gradalign_curriculum_job():
    from .definitions import defs

    return defs().resolve_job_def("gradalign_curriculum_job")


# On a small machine the per-step process start (importing torch and transformers, ~8 s) would cost more than
# most steps; run the demo's steps in one process. `dg launch --job learnalign_job` uses the multiprocess executor.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


def run_demo(run_config: dict | None = None, job=learnalign_job) -> bool:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(dg.reconstructable(job), instance=instance, run_config={**IN_PROCESS, **(run_config or {})})
        if not result.success:
            print(f"run {result.run_id} failed; inspect it with `learnalign dev`", file=sys.stderr)
            return False
        print(f"run {result.run_id} succeeded")
    return True


def latest_metadata(asset: str) -> dict | None:
    """The metadata of an asset's latest materialization on this project's instance, or None."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return None if event is None or event.asset_materialization is None else event.asset_materialization.metadata


def latest_benchmark_table() -> str:
    from .core.artifacts import read_artifact
    from .defs.metadata import markdown_table

    metadata = latest_metadata("benchmark_results")
    if metadata is None:
        return "benchmark_results has not been materialized yet: run `learnalign demo`"
    table = read_artifact(Path(metadata["path"].value), metadata["sha256"].value)
    columns = ["policy", "benchmark", "num_problems", "num_correct", "accuracy", "decoding", "template", "verifier", "backend"]
    return markdown_table(table.select(columns)) + f"\n\ntrained - warmup: {metadata['trained_minus_warmup_points'].value:+.1f} points"


def latest_comparison_table() -> str:
    metadata = latest_metadata("comparison_report")
    if metadata is None:
        return "comparison_report has not been materialized yet: run `learnalign compare`"
    return f"{metadata['table_a'].value}\n\nplot: {metadata['plot_path'].value}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="learnalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["demo", "dev", "report", "compare", "curriculum"])
    parser.add_argument("--preset", default="demo", help="run-config preset for `demo` (learnalign_pipeline.defs.presets)")
    parser.add_argument("--png-dir", default=None, help="`compare`: also copy the accuracy-vs-budget plot into this directory")
    args, rest = parser.parse_known_args(argv)
    prepare_environment()
    if args.command == "demo":
        from .defs.presets import PRESETS

        if not run_demo(PRESETS[args.preset]):
            return 1
        print(latest_benchmark_table())
        return 0
    if args.command in ("compare", "curriculum"):
        from .defs.presets import PRESETS

        job = selection_comparison_job if args.command == "compare" else gradalign_curriculum_job
        run_config = dict(PRESETS[args.preset]) if args.preset != "demo" else {}
        if args.png_dir:
            ops = {**run_config.get("ops", {}), "comparison_report": {"config": {"png_dir": args.png_dir}}}
            run_config = {**run_config, "ops": ops}
        if not run_demo(run_config, job=job):
            return 1
        if args.command == "compare":
            print(latest_comparison_table())
        return 0
    if args.command == "report":
        print(latest_benchmark_table())
        return 0
    return subprocess.call(["dg", "dev", *rest])


if __name__ == "__main__":
    sys.exit(main())
