"""The fault-injection harness (scripts/fault_injection.py) on a part of the smoke pipeline: one SIGKILL and one
ENOSPC at a write drawn from the seed, each followed by the normal command; every asset must end with the digest
of the uninterrupted run. Minutes long: deselected by default, run with `pytest -m faults`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_injection.py"
ASSETS = "benchmark_problems,benchmark_rejected_problems,raw_problems,rejected_problems,pretrained_policy"


def test_a_killed_and_a_disk_full_run_rerun_to_the_uninterrupted_digests(tmp_path):
    command = [
        sys.executable,
        str(SCRIPT),
        "--work",
        str(tmp_path),
        "--assets",
        ASSETS,
        "--kills",
        "1",
        "--enospc",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["trials"] == report["identical"] == 2
    reference = json.loads((tmp_path / "reference.json").read_text())
    assert len(reference["digests"]) == 5 and reference["writes"] > 0
    kill, enospc = report["records"]
    assert kill["faulted_exit"] != 0 and kill["stages_hit"]  # the kill hit the run, somewhere it names
    assert kill["rerun_exit"] == enospc["rerun_exit"] == 0  # the normal command healed both
