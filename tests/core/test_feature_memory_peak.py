"""The memory estimator (core/selection/memory.py) against the measured peak of the feature stage on the CPU, in
float32 and under bfloat16 autocast: each measurement is one `gradient_features` call in a fresh process, its peak
resident set above what the models and batch hold (scripts/bench_feature_memory.py, glibc's mmap threshold fixed so
freed tensors leave the resident set). Under autocast the residual stream stays float32 and every pass autograd keeps
saves its own bfloat16 copy of the frozen weights; an estimator that counts neither is 20-28% low here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench_feature_memory.py"


def measured(arm: str, precision: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(BENCH.parents[1])
    out = subprocess.run(
        [sys.executable, str(BENCH), "--child", "features", arm, "deep 16L h256", "96", precision],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("arm", "precision"),
    [("in-hook + checkpointing", "float32"), ("in-hook + checkpointing", "bfloat16"), ("in-hook", "bfloat16")],
)
def test_the_estimate_is_within_20_percent_of_the_measured_peak(arm, precision):
    m = measured(arm, precision)
    estimate = m["estimate_bytes"] + m["fixed_bytes"]
    assert abs(estimate / m["peak_bytes"] - 1) <= 0.2, (estimate / 2**20, m["peak_bytes"] / 2**20)
