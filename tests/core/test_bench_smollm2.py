"""scripts/bench_smollm2.py's pure helpers: the agreement figures of two feature matrices and the side-by-side table
built from a run's figures (the run itself needs the real model and vLLM: a plumbing run is in docs/results.md)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_smollm2.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_smollm2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agreement_is_the_worst_problem_not_the_whole_matrix(bench):
    loop = torch.tensor([[1.0, 0.0], [0.0, 100.0]])
    batched = torch.tensor([[1.1, 0.0], [0.0, 100.0]])  # 10% off on the small row: 0.1% of the matrix's norm
    agreement = bench.feature_agreement(batched, loop)
    assert agreement["max_relative_error"] == pytest.approx(0.1)
    assert agreement["min_cosine"] == pytest.approx(1.0)
    swapped = bench.feature_agreement(loop.flip(0), loop)  # rows credited to the wrong problem
    assert swapped["min_cosine"] == pytest.approx(0.0)


def figures(bench) -> dict:
    arm = dict(problems=2, seconds=4.0, problems_per_s=0.5, prompt_tokens=100, completion_tokens=50)
    arm.update(completion_tokens_per_s=12.5, flops=1e10, flops_per_s=2.5e9, sub_batches=1)
    longer = {**arm, "seconds": 10.0, "completion_tokens": 150, "completion_tokens_per_s": 15.0}
    return {
        "settings": {"lengths": [8, 16], "max_new_tokens": 16},
        "rollouts": {
            "transformers": {"completions": 4, "tokens_per_s": 20.0},
            "vllm": {"completions": 4, "tokens_per_s": 50.0},
        },
        "features": {
            "gemm_flops": 1e10,
            "gemm_size": 256,
            "batched": {
                "8": {**arm, "peak_bytes": 3 << 20, "estimate_bytes": 2 << 20, "peak_tokens": 1024},
                "16": {**longer, "peak_bytes": 5 << 20, "estimate_bytes": 4 << 20, "peak_tokens": 2048},
            },
            "loop": {"length": 8, "problems": 2, "problems_per_s": 0.25},
            "agreement": {"max_relative_error": 1e-6, "min_cosine": 0.999999},
            "marginal_bytes_per_token": {"measured": 2048.0, "estimate": 2048.0, "tokens": 1024},
        },
    }


def test_the_table_has_each_comparison_with_compared_over_baseline(bench):
    rows = bench.summary_rows(figures(bench))
    by_start = {r["measurement"].split(" (")[0].split(",")[0]: r for r in rows}
    assert by_start["rollout tokens/s"]["ratio"] == "2.50x"  # vLLM / transformers
    assert by_start["feature problems/s"]["ratio"] == "2.00x"  # batched / one problem per call
    flops = [r for r in rows if r["measurement"].startswith("feature FLOP/s")]
    assert [r["ratio"] for r in flops] == ["25.0%", "25.0%"]  # share of the GEMM rate
    memory = [r for r in rows if r["measurement"].startswith("feature peak memory per token")]
    assert [r["ratio"] for r in memory] == ["1.50x", "1.25x"]  # measured / estimate
    assert by_start["feature stage"]["ratio"] == "2.50x" and "(3.00x)" in by_start["feature stage"]["measurement"]
    table = bench.markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and all(line.count("|") == 5 for line in table)


def test_a_zero_baseline_gives_no_ratio_rather_than_a_crash(bench):
    assert math.isnan(bench.ratio(1.0, 0.0))
    assert bench.table_row("x", "0", "1", bench.ratio(1.0, 0.0))["ratio"] == "n/a"
