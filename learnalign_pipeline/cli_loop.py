"""The daily loop's commands (`learnalign dataset`, `observe`, `train-now`): what a person does to point the loop
at a file, have it looked at now, or train now instead of tonight. The running daemon (`learnalign dev`) picks
each up on its next tick; nothing needs a restart.

    learnalign dataset pool PATH [--format gsm8k|math|generic] [--prompt-column C] [--answer-column C]
                                 [--solution-column C] [--category-column C] [--numeric-gold]
    learnalign dataset benchmark PATH ...       the held-out split
    learnalign dataset show                     what the loop reads now, and from where
    learnalign dataset clear pool|benchmark     back to LEARNALIGN_POOL_PATH / the embedded generator
    learnalign observe                          observe the dataset files now (instead of at the next */15 tick)
    learnalign train-now                        open the nightly training window now (until its next close)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .paths import project_home

LOOP_COMMANDS = ("dataset", "observe", "train-now")


def _settings_file() -> Path:
    from .lib.resources import DATASETS_FILE

    return project_home() / DATASETS_FILE


def dataset(argv: list[str]) -> int:
    from .core.data.datasets import SPLITS, mapping, read_datasets, write_dataset
    from .core.data.loaders import SourceConfig, load_problems

    parser = argparse.ArgumentParser(prog="learnalign dataset", description="Set the file the loop reads for a split.")
    parser.add_argument("name", choices=[*SPLITS, "show", "clear"])
    parser.add_argument("path", nargs="?", help="local path or fsspec URL (.jsonl, .parquet, .csv, save_to_disk dir)")
    parser.add_argument("--format", choices=["gsm8k", "math", "generic"], default="gsm8k")
    for column in ("prompt", "answer", "solution", "category"):
        parser.add_argument(f"--{column}-column", default=None)
    parser.add_argument("--numeric-gold", action="store_true", help="generic format: reject non-numeric gold answers")
    args = parser.parse_args(argv)
    path = _settings_file()
    if args.name == "show":
        configured = read_datasets(path)
        for name, split in SPLITS.items():
            entry = configured.get(split)
            print(
                f"{name}: "
                + (json.dumps(mapping(entry)) if entry else "not set (LEARNALIGN_*_PATH or the embedded generator)")
            )
        print(f"settings file: {path}")
        return 0
    if args.name == "clear":
        if args.path not in SPLITS:
            parser.error(f"clear what? one of {', '.join(SPLITS)}")
        write_dataset(path, args.path, None)
        print(f"{args.path}: cleared; the next observation switches back (`learnalign observe` to do it now)")
        return 0
    if not args.path:
        parser.error("a path is needed")
    local = "://" not in args.path
    source = SourceConfig(
        path=str(Path(args.path).resolve()) if local else args.path,  # the code server's working directory differs
        format=args.format,
        split=SPLITS[args.name],
        prompt_column=args.prompt_column,
        answer_column=args.answer_column,
        solution_column=args.solution_column,
        category_column=args.category_column,
        numeric_gold=args.numeric_gold,
    )
    # Load it now with the real loader, so a wrong path or mapping shows here and not in tonight's run.
    try:
        result = load_problems(source)
    except (OSError, ValueError) as error:
        print(f"not set: {error}")
        return 2
    report = result.report
    families = dict(result.problems.group_by("category").len().sort("category").iter_rows())
    print(
        f"{args.path}: {report.accepted} problems ({report.rows_read} rows read, {report.rejected} rejected, "
        f"{report.duplicates_collapsed} duplicates); families: {families}"
    )
    if result.rejected.height:
        print(
            "rejected, e.g.: "
            + "; ".join(f"{r['location']} {r['reason']}" for r in result.rejected.head(3).iter_rows(named=True))
        )
    write_dataset(path, args.name, source)
    print(
        f"{args.name} -> {args.path} ({args.format}); written to {path}. The loop picks it up at its next observation "
        "(`learnalign observe` to do it now)."
    )
    return 0


def _observe(keys: list[str]) -> bool:
    import dagster as dg

    from .definitions import defs

    job = defs().resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(k) for k in keys],
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            tags={"learnalign/trigger": "cli"},
        )
        for key in keys:
            records = instance.fetch_observations(dg.AssetKey(key), limit=1).records
            if records:
                observation = records[0].asset_observation
                source = observation.metadata.get("source")
                print(f"{key}: {source.value if source else 'observed'} (version {observation.data_version[:12]})")
    return result.success


def main(command: str, argv: list[str]) -> int:
    if command == "dataset":
        return dataset(argv)
    if command == "observe":
        ok = _observe(["pool_dataset", "benchmark_dataset"])
        print("the running daemon starts what changed within 30 s" if ok else "observation failed")
        return 0 if ok else 1
    from .defs.automation.conditions import training_window_hours, window_text

    ok = _observe(["training_window"])
    print(
        f"training window open now (it closes at the end of {window_text(training_window_hours())}); the running "
        "daemon starts training, warm-up and benchmarks whose inputs changed within 30 s"
        if ok
        else "could not open the window"
    )
    return 0 if ok else 1
