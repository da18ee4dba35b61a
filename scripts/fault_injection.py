"""Fault-injection harness: kill the pipeline anywhere, fill its disk anywhere, rerun it with the normal command,
and check that every asset ends with the digest of an uninterrupted run.

    python scripts/fault_injection.py --work /tmp/faults --kills 3 --enospc 2 --seed 0 [--preset smoke]
        [--assets raw_problems,pretrained_policy,...]      # a part of learnalign_job (default: `learnalign demo`)
    python scripts/fault_injection.py --work /tmp/faults --kills 0 --enospc 0 --full-disk 3   # as root
    python scripts/fault_injection.py --work /tmp/faults --replay kill:17   # one trial again, from its seed

1. The reference: one uninterrupted run in a fresh `LEARNALIGN_HOME`, counting the files it opens for writing
   under the home (a Python audit hook sees every `open` for writing made from Python).
2. A kill trial (seed s): a fresh home, the same command, SIGKILL of the process (its training processes die with
   it: parent-death signal) when it opens its n-th file for writing, n drawn from s in [1, the reference's count];
   with `--kill-by time`, after a time drawn from s in [1 s, the reference's wall time] instead; with
   `--kill-by stage`, inside a stage: trial i takes the reference's stages in turn (the console's `▶` lines) and
   kills after a time drawn from s within that stage's duration in the reference, counted from its `▶` line.
3. An ENOSPC trial (seed s): the n-th write raises `OSError(ENOSPC)` ("No space left on device"), as a full disk
   does; the run must fail (or finish) and leave nothing that a rerun would read.
4. A full-disk trial (seed s, `--full-disk`, needs root): the home is a tmpfs whose size is drawn from s in [5%, 100%]
   of the reference home's final size, so every writer fills it, native code included (safetensors, DuckDB, the
   instance's SQLite); before the rerun the tmpfs is grown to 2 GiB, as an operator frees space.
5. After any of them, the normal command again on the same home (it recovers the killed run first), which must succeed;
   then every asset's latest recorded sha256 is compared with the reference's.

The stage hit is the step (or steps) the killed or failed run had started and not finished, read from its event
log ("between steps" when none). A write-indexed trial is reproduced exactly by its seed (`--replay kind:seed`);
a time-indexed kill lands near the same point, timing permitting. The report is one line per trial and a summary
(trials, stages hit, identical outcomes), also written to `<work>/report.json`. Exit status 1 if any rerun failed or
any digest differed.

Writes outside Python (safetensors' and DuckDB's native code, SQLite) are not counted or failed by the audit hook;
the full-disk trials cover them.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
STAGE_MARK = "▶ "  # the console's stage start line
POLL_S = 0.05
FREED_DISK = 2 << 30  # the tmpfs size for the rerun after a full-disk trial
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


# ---- the child: the normal command, with a write counter or a fault armed ------------------------------------------


def _writes_under(root: str):
    """A predicate: is this `open` audit event a write to a file under `root`?"""

    def is_write(args) -> bool:
        path, mode, flags = (list(args) + [None, None, None])[:3]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        path = os.fsdecode(path)
        if not os.path.abspath(path).startswith(root):
            return False
        if isinstance(mode, str):
            return any(c in mode for c in "wax+")
        return isinstance(flags, int) and bool(flags & WRITE_FLAGS)

    return is_write


def arm(fault: str, at: int, count_file: str | None) -> None:
    """Install the audit hook: count writes under $LEARNALIGN_HOME, and at the `at`-th one SIGKILL this process
    (`kill`) or raise ENOSPC (`enospc`)."""
    is_write = _writes_under(os.path.abspath(os.environ["LEARNALIGN_HOME"]))
    state = {"writes": 0, "fired": False}

    def hook(event, args):
        if event != "open" or state["fired"] or not is_write(args):
            return
        state["writes"] += 1
        if fault != "none" and state["writes"] == at:
            state["fired"] = fault == "enospc"  # later writes go through: a disk that frees up again
            print(f"fault_injection: {fault} at write {at}: {os.fsdecode(args[0])}", file=sys.stderr, flush=True)
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(args[0]))

    if count_file:
        import atexit

        atexit.register(lambda: Path(count_file).write_text(str(state["writes"])))
    sys.addaudithook(hook)


def child(args: argparse.Namespace) -> int:
    arm(args.fault, args.at, args.count_file)
    from learnalign_pipeline import cli

    if not args.assets:
        return cli.main(["demo", "--preset", args.preset])
    from learnalign_pipeline.presets import PRESETS

    cli.prepare_environment()
    return 0 if cli.run_job("learnalign_job", dict(PRESETS[args.preset]), assets=args.assets.split(",")) else 1


# ---- the harness -------------------------------------------------------------------------------------------------


def _command(args, fault: str = "none", at: int = 0, count_file: Path | None = None) -> list[str]:
    command = [sys.executable, str(HERE), "child", "--fault", fault, "--at", str(at), "--preset", args.preset]
    if args.assets:
        command += ["--assets", args.assets]
    if count_file:
        command += ["--count-file", str(count_file)]
    return command


def _environment(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    # Unbuffered, so the console's stage lines reach the log as they are printed (stage-indexed kills read them).
    return {
        **env,
        "LEARNALIGN_HOME": str(home),
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    }


class _StageLines:
    """Follows a run's log from `offset`: each call returns the stages whose start line (`▶ name`) appeared since the
    last call (only the new bytes are read; a line is taken once it is complete)."""

    def __init__(self, log: Path, offset: int):
        self.file = open(log, "rb")
        self.file.seek(offset)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""

    def __call__(self) -> list[str]:
        *lines, self.partial = (self.partial + self.decoder.decode(self.file.read())).split("\n")
        return [line[len(STAGE_MARK) :].strip() for line in lines if line.startswith(STAGE_MARK)]


def _run(
    command: list[str], home: Path, log: Path, kill_after: float | None = None, kill_in: str | None = None
) -> tuple[int, float, dict[str, float]]:
    """Run `command` in its own process group; SIGKILL the group `kill_after` seconds after it starts, or, with
    `kill_in`, after its stage `kill_in` starts. Returns the exit code, the wall time and when each stage started."""
    started = time.perf_counter()
    offset = log.stat().st_size if log.exists() else 0
    stage_started: dict[str, float] = {}
    with open(log, "ab") as out:
        process = subprocess.Popen(command, env=_environment(home), stdout=out, stderr=out, start_new_session=True)
        new_stages = _StageLines(log, offset)
        deadline = None if kill_in else kill_after
        while process.poll() is None:
            now = time.perf_counter() - started
            for stage in new_stages():
                stage_started.setdefault(stage, now)
            if kill_in in stage_started and deadline is None:
                deadline = stage_started[kill_in] + kill_after
            if deadline is not None and now >= deadline:
                with contextlib.suppress(ProcessLookupError):  # it may have just ended by itself
                    os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(POLL_S)
        code = process.wait()
        new_stages.file.close()
    return code, time.perf_counter() - started, stage_started


def _instance(home: Path):
    import dagster as dg

    return dg.DagsterInstance.from_config(str(home / "dagster_home"))


def digests(home: Path) -> dict[str, str]:
    """Every asset's latest recorded sha256 in `home`'s instance."""
    with _instance(home) as instance:
        out = {}
        for key in instance.all_asset_keys():
            event = instance.get_latest_materialization_event(key)
            metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
            if "sha256" in metadata:
                out[key.to_user_string()] = metadata["sha256"].value
        return out


def stages_hit(home: Path) -> list[str]:
    """The steps the last run of `home` started and did not finish, or that failed (the stage a fault hit)."""
    import dagster as dg

    with _instance(home) as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return ["before the run"]
        started, succeeded, failed = [], set(), []
        for entry in instance.all_logs(runs[0].run_id):
            event = entry.dagster_event
            if event is None or not event.step_key:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                started.append(event.step_key)
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                succeeded.add(event.step_key)
            elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
                failed.append(f"{event.step_key} (failed)")
        unfinished = [s for s in started if s not in succeeded and f"{s} (failed)" not in failed]
        return unfinished + failed or ["between steps"]


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _mount_tmpfs(home: Path, size: int) -> None:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(home)], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"--full-disk needs root and tmpfs (mount -t tmpfs): {done.stderr.decode().strip()}")


def _grow_tmpfs(home: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(home)], check=True)


def _unmount(home: Path) -> None:
    subprocess.run(["umount", str(home)], check=True)


def _durations(stage_started: dict[str, float], wall: float) -> dict[str, float]:
    """Each stage's duration: from its start line to the next stage's (the last one: to the end of the run)."""
    order = sorted(stage_started.items(), key=lambda item: item[1])
    ends = [t for _, t in order[1:]] + [wall]
    return {name: round(end - t, 2) for (name, t), end in zip(order, ends)}


def reference(args, work: Path) -> dict:
    path = work / "reference.json"
    if path.exists():
        result = json.loads(path.read_text())
        if not {"stages", "home_bytes"} <= result.keys():
            raise SystemExit(f"{path} predates stage-indexed and full-disk trials: use a new --work directory")
        return result
    home = work / "reference"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    count = work / "reference_writes.txt"
    code, wall, stage_started = _run(_command(args, count_file=count), home, work / "reference.log")
    if code != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {code}); see {work / 'reference.log'}")
    result = {"wall_s": wall, "writes": int(count.read_text()), "digests": digests(home), "assets": args.assets}
    result["stages"] = _durations(stage_started, wall)
    result["home_bytes"] = _tree_bytes(home)
    path.write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def trial(args, work: Path, ref: dict, kind: str, seed: int) -> dict:
    rng = random.Random(f"{kind}:{seed}")
    home = work / f"{kind}-{seed}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    log = work / f"{kind}-{seed}.log"
    at = rng.randint(1, ref["writes"])
    kill_after, kill_in = None, None
    fault = f"write {at}"
    if kind == "full":
        at = rng.randint(max(1, ref["home_bytes"] // 20), ref["home_bytes"])
        fault = f"disk {at / 1e6:.2f} MB"
        _mount_tmpfs(home, at)
        command = _command(args)
    elif kind == "kill" and args.kill_by == "time":
        at, kill_after = 0, rng.uniform(1.0, ref["wall_s"])
        fault = f"after {kill_after:.1f} s"
        command = _command(args)
    elif kind == "kill" and args.kill_by == "stage":
        stages = sorted(ref["stages"], key=ref["stages"].get, reverse=True)
        kill_in = stages[(seed - args.seed) % len(stages)]
        at, kill_after = 0, rng.uniform(0.0, ref["stages"][kill_in])
        fault = f"{kill_after:.1f} s into {kill_in}"
        command = _command(args)
    else:
        command = _command(args, "kill" if kind == "kill" else "enospc", at)
    code, wall, _ = _run(command, home, log, kill_after, kill_in)
    if kind == "full":
        _grow_tmpfs(home, FREED_DISK)
    hit = stages_hit(home)
    lines = log.read_text(errors="replace").splitlines()
    fired = [line for line in lines if line.startswith("fault_injection: ")]
    if kind == "full":  # the first write the full disk refused, as the run reported it
        fired = [f"fault_injection: {line.strip()[:160]}" for line in lines if "No space left" in line][:1]
    rerun_code, rerun_wall, _ = _run(_command(args), home, log)
    got = digests(home)
    differing = sorted(k for k in set(ref["digests"]) | set(got) if ref["digests"].get(k) != got.get(k))
    record = {
        "trial": f"{kind}:{seed}",
        "fault": fault,
        "target": fired[-1].rsplit(": ", 1)[-1] if fired else "",
        "faulted_exit": code,
        "stages_hit": hit,
        "rerun_exit": rerun_code,
        "identical": rerun_code == 0 and not differing,
        "differing": differing,
        "wall_s": round(wall + rerun_wall, 1),
    }
    if record["identical"] and not args.keep:
        if kind == "full":
            _unmount(home)
        shutil.rmtree(home, ignore_errors=True)
    return record


def harness(args) -> int:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ref = reference(args, work)
    print(f"reference: {ref['wall_s']:.0f} s, {ref['writes']} writes, {len(ref['digests'])} asset digests", flush=True)
    if args.replay:
        kind, seed = args.replay.split(":")
        plan = [(kind, int(seed))]
    else:
        plan = [("kill", args.seed + i) for i in range(args.kills)]
        plan += [("enospc", args.seed + i) for i in range(args.enospc)]
        plan += [("full", args.seed + i) for i in range(args.full_disk)]
    records = []
    for kind, seed in plan:
        record = trial(args, work, ref, kind, seed)
        records.append(record)
        verdict = "identical" if record["identical"] else f"DIFFERENT {record['differing']}"
        print(
            f"{record['trial']:>12}  {record['fault']:>14}  hit {', '.join(record['stages_hit'])}  "
            f"exit {record['faulted_exit']} -> rerun {record['rerun_exit']}  {verdict}  ({record['wall_s']:.0f} s)  "
            f"{Path(record['target']).relative_to(work) if record['target'].startswith(str(work)) else record['target']}",
            flush=True,
        )
    stages = sorted({s.split("[")[0] for r in records for s in r["stages_hit"]})
    identical = sum(r["identical"] for r in records)
    summary = {"trials": len(records), "identical": identical, "stages_hit": stages, "records": records}
    (work / "report.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(records)} trials, {identical} identical; stages hit: {', '.join(stages)}")
    return 0 if identical == len(records) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="harness", choices=["harness", "child"])
    parser.add_argument("--work", default=".learnalign/faults", help="where the homes, logs and report go")
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--assets", default="", help="comma-separated assets of learnalign_job (default: all)")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--enospc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="trial i uses seed + i")
    parser.add_argument("--full-disk", type=int, default=0, help="full-disk trials (a size-limited tmpfs; root)")
    parser.add_argument("--kill-by", choices=["write", "time", "stage"], default="write")
    parser.add_argument("--replay", default="", help="run one trial again: kind:seed, e.g. kill:17")
    parser.add_argument("--keep", action="store_true", help="keep the homes of identical trials too")
    parser.add_argument("--fault", default="none", choices=["none", "kill", "enospc"], help=argparse.SUPPRESS)
    parser.add_argument("--at", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return child(args) if args.mode == "child" else harness(args)


if __name__ == "__main__":
    sys.exit(main())
