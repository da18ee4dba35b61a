"""The PNG charts asset metadata shows: they render for the edge cases a small benchmark family hits."""

from __future__ import annotations

import polars as pl

from learnalign_pipeline.core.evaluation.charts import accuracy_by_family, accuracy_chart, wilson_interval


def test_wilson_interval_stays_in_the_unit_interval_and_contains_the_rate():
    for n in range(1, 60):
        for correct in range(n + 1):
            low, high = wilson_interval(correct, n)
            assert 0.0 <= low <= high <= 1.0
            assert low - 1e-12 <= correct / n <= high + 1e-12


def test_accuracy_chart_renders_families_solved_always_or_never():
    """6 of 6 and 0 of 11 correct: the interval ends meet the accuracy up to float rounding (this chart once
    failed benchmark_results with matplotlib's 'yerr must not contain negative values')."""
    outcomes = pl.DataFrame(
        {
            "policy": ["trained"] * 17 + ["warmup"] * 17,
            "problem_id": [f"p{i}" for i in range(17)] * 2,
            "category": (["always"] * 6 + ["never"] * 11) * 2,
            "reward": ([1.0] * 6 + [0.0] * 11) * 2,
        }
    )
    table = accuracy_by_family(outcomes)
    assert table.filter(pl.col("family") == "always")["accuracy"].to_list() == [1.0, 1.0]
    png = accuracy_chart(table, "greedy pass@1 by family")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
