"""scripts/gpu_check.py runs where only torch and transformers exist (the GPU machine has no polars, Dagster or
vLLM): its --tiny mode runs the same checks on CPU, in float32 and under bfloat16 autocast (the CUDA code path),
with those packages made unimportable, and prints every column. Its correctness check catches a broken batched
path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testing_utils import requires_gpu

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
BLOCK = (
    "for name in ('polars', 'dagster', 'vllm'):\n    sys.modules[name] = None  # import fails, as on the GPU machine\n"
)
# Rows of each problem's features credited to the next problem: what a wrong row -> problem map would do.
BREAK_BATCHED = (
    "import learnalign_pipeline.core.selection.capture as capture\n"
    "outer = capture.per_problem_outer\n"
    "capture.per_problem_outer = lambda x, g, owner, n: outer(x, g, (owner + 1) % n, n)\n"
)
COLUMNS = ("tokens/s", "TFLOP/s", "MFU", "peak alloc GiB", "peak reserved GiB")


def run_check(tmp_path, *args: str, prelude: str = "", timeout: int = 600):
    code = (
        f"import sys, runpy\n{BLOCK}sys.path.insert(0, {str(SCRIPT.parents[1])!r})\n{prelude}"
        f"sys.argv = ['gpu_check.py', '--tiny', *{list(args)!r}]\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    return done, result["rows"], result["failed"]


@pytest.mark.parametrize("autocast", ["off", "bfloat16"])
def test_gpu_check_runs_without_polars_dagster_or_vllm(tmp_path, autocast):
    done, rows, failed = run_check(tmp_path, "--autocast", autocast)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert failed == []
    checks = [row["check"].split(" [")[0] for row in rows]
    order = ["0 versions", "0 GEMM peak", "1 device audit", "2 features", "3 batched vs loop", "4 TRL GRPO step"]
    order.append("5 features")
    assert [c for c in dict.fromkeys(checks) if c in order] == order  # every check, in the decision order
    assert {"check": rows[0]["check"], "quantity": "transformers"}.items() <= rows[0].items()
    assert any(r["check"] == "1 device audit" and r["value"] == "ok" for r in rows)
    computed = [r for r in rows if r["check"].startswith(("2 ", "3 ", "4 ", "5 ")) and "tokens/s" in r]
    assert {r["check"].split(" [")[0] for r in computed} == set(order[3:])
    assert all(all(c in r for c in COLUMNS) for r in computed)
    assert all("estimate GiB" in r for r in computed if "features" in r["check"])
    assert any("colocated-vLLM" in r["quantity"] and r["value"].startswith("unmeasured") for r in rows)
    cosine = next(r for r in rows if r["quantity"].startswith("cosine"))
    assert cosine["value"].endswith(" ok")
    assert not [r for r in rows if "OOM" in r["value"] or r["check"] == "stopped"]


def test_the_cosine_check_fails_when_the_batched_path_is_broken(tmp_path):
    done, rows, failed = run_check(tmp_path, "--only", "features", prelude=BREAK_BATCHED)
    assert done.returncode != 0 and "batched features differ" in done.stderr
    cosine = next(r for r in rows if r["quantity"].startswith("cosine"))
    assert cosine["value"].endswith("FAIL") and failed


def test_a_check_running_at_the_time_limit_is_stopped_and_reported(tmp_path):
    done, rows, _ = run_check(tmp_path, "--time-limit", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert rows[-1]["check"] == "stopped"


@requires_gpu
def test_on_a_gpu_the_feature_checks_run_and_agree_with_the_loop(tmp_path):
    """The GPU tier: the 1.5B feature stage and the batched-vs-loop cosine on the real device, within 5 minutes."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "features", "--time-limit", "300"],
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, "OUT": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert next(r for r in rows if r["quantity"].startswith("cosine"))["value"].endswith(" ok")
