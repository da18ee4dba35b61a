"""Wall time of the daily loop, from an edit of the pool file to a settled selected_subset, with the real daemon.

A fresh LEARNALIGN_HOME gets a GSM8K-format pool and benchmark file (generated problems) and one in-process
bootstrap run of the whole pipeline (tiny policies); then `dagster-daemon run` starts on it with the dataset
observation cron at one minute, the pool file is edited (rows removed and added) and the script waits until a
selected_subset built from the edited pool exists and no run is in progress. Automated runs use the code
location's defaults (no run config), as in production.

`--code DIR` times another checkout of the pipeline (e.g. an export of the commit before a change) with the same
harness and the same edit. If no observation of the edited file happens by itself within `--observe-after`
seconds, the script observes it by hand, as a person would click "Observe" in the UI, and says so.

    python scripts/loop_wall_time.py                       # this checkout
    python scripts/loop_wall_time.py --code /tmp/before    # another one
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout of learnalign_pipeline to time")
    parser.add_argument("--pool", type=int, default=128, help="pool problems")
    parser.add_argument("--remove", type=int, default=8, help="pool rows the edit removes")
    parser.add_argument("--add", type=int, default=8, help="pool rows the edit adds")
    parser.add_argument("--observe-after", type=float, default=150, help="observe by hand after this many seconds")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()

    code = args.code.resolve()
    sys.path[:0] = [str(code), str(ROOT / "tests")]  # the pipeline under test first; the harness from here
    os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    import dagster as dg
    from loop_harness import (
        LoopHome,
        Service,
        bootstrap,
        far_from_now_window,
        in_progress,
        python_bin,
        run_summary,
        settled_subset,
        tiny_run_config,
        wait_for,
    )

    root = Path(tempfile.mkdtemp(prefix="loop-wall-time-"))
    home = LoopHome(root, pool_size=args.pool, benchmark_size=32)
    started = time.perf_counter()
    bootstrap(home, tiny_run_config())
    print(f"bootstrap (in process, tiny policies): {time.perf_counter() - started:.0f} s", flush=True)
    env = home.env(
        PYTHONPATH=str(code),
        LEARNALIGN_OBSERVE_CRON="* * * * *",
        LEARNALIGN_TRAINING_WINDOW=far_from_now_window(),
        LEARNALIGN_GATED_CRON="0 0 1 1 *",  # the window of versions before LEARNALIGN_TRAINING_WINDOW: never here
        LEARNALIGN_GATED_CLOSE_CRON="0 1 1 1 *",
    )
    daemon = Service(
        [python_bin("dagster-daemon"), "run", "-w", str(code / "workspace.yaml")], env, root / "daemon.log", cwd=code
    )
    result: dict = {"code": str(code), "pool": args.pool, "removed": args.remove, "added": args.add}
    try:
        with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
            # Settle: the daemon's first ticks, and nothing running at the moment of the edit.
            time.sleep(45)
            wait_for(lambda: not in_progress(instance), 600, "an idle moment before the edit", daemon)
            edited = time.time()
            home.edit_pool(remove=args.remove, add=args.add)
            print(f"edited {home.pool}: -{args.remove} +{args.add} rows", flush=True)
            try:
                wait_for(lambda: _changed(instance, edited), args.observe_after, "an observation of the edit", daemon)
                result["observed_by"] = "daemon"
            except TimeoutError:
                _observe_by_hand(home)
                result["observed_by"] = f"hand, after {args.observe_after:.0f} s without an observation"
            observed = _changed(instance, edited).timestamp
            print(f"observed ({result['observed_by']}) {observed - edited:.0f} s after the edit", flush=True)
            record = wait_for(
                lambda: settled_subset(instance, edited), args.timeout, "a settled subset", daemon, poll=3
            )
            settled = record.timestamp
            runs = run_summary(instance, edited)
            result.update(
                edit_to_observation_s=round(observed - edited, 1),
                observation_to_settled_subset_s=round(settled - observed, 1),
                edit_to_settled_subset_s=round(settled - edited, 1),
                runs=len([r for r in runs if r["created"] < settled]),
                failed_runs=len([r for r in runs if r["status"] == "FAILURE"]),
                subset_materializations=len([r for r in runs if "selected_subset" in r["assets"]]),
                load_average=os.getloadavg(),
                run_list=[
                    (r["status"], r["assets"])
                    for r in runs
                    if r["created"] < settled and r["assets"] != ["pool_dataset"]
                ],
            )
    finally:
        daemon.interrupt()
        print(json.dumps(result, indent=1))
        print(f"home: {root}" + ("" if args.keep else " (removed)"))
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    return 0


def _changed(instance, after: float):
    """The first observation of pool_dataset after `after` whose data version differs from the one before."""
    from loop_harness import observations

    records = observations(instance, "pool_dataset")
    before = [r for r in records if r.timestamp <= after]
    old = before[0].asset_observation.data_version if before else None
    new = [r for r in records if r.timestamp > after and r.asset_observation.data_version != old]
    return new[-1] if new else None


def _observe_by_hand(home) -> None:
    """What clicking "Observe" on pool_dataset does: one observation run of the source, in this process."""
    import dagster as dg

    saved = dict(os.environ)
    os.environ.update(home.env())
    try:
        from learnalign_pipeline.definitions import defs

        job = defs().resolve_implicit_global_asset_job_def()
        with dg.DagsterInstance.get() as instance:
            assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("pool_dataset")]).success
    finally:
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    sys.exit(main())
