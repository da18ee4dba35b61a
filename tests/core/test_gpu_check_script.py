"""scripts/gpu_check.py runs where only torch and transformers exist (the GPU machine has no polars, Dagster or
vLLM): its --tiny mode runs the same checks on CPU with those packages made unimportable."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
RUN = (
    "import sys, runpy\n"
    "for name in ('polars', 'dagster', 'vllm'):\n"
    "    sys.modules[name] = None  # import fails, as on the GPU machine\n"
    f"sys.argv = ['gpu_check.py', '--tiny']\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
)


def test_gpu_check_runs_without_polars_dagster_or_vllm(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", RUN],
        capture_output=True,
        text=True,
        timeout=600,
        env={"OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {row[0].split(" [")[0] for row in rows}
    assert {
        "1 device audit",
        "2 features",
        "3 batched vs loop",
        "5 sampler",
        "6 checkpoint",
        "7 TRL GRPO step",
    } <= checks
    assert ["1 device audit", "features, loss and sampler on the compute device", "ok"] in rows
    assert not [row for row in rows if "OOM" in row[2] or "stopped" in row[2]]
