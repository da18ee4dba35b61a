"""The experiment's statistics against tabulated values and cases computable by hand."""

from __future__ import annotations

import math

import pytest

from learnalign_pipeline.core.evaluation.statistics import (
    holm,
    incomplete_beta,
    minimum_detectable_effect,
    paired_summary,
    sign_flip_p,
    spearman,
    steps_to_reach,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(
    ("df", "two_sided_95"),
    [(1, 12.7062), (2, 4.3027), (5, 2.5706), (7, 2.3646), (9, 2.2622), (15, 2.1314), (30, 2.0423), (120, 1.9799)],
)
def test_t_quantiles_match_the_table(df, two_sided_95):
    assert t_quantile(0.975, df) == pytest.approx(two_sided_95, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-two_sided_95, abs=1e-4)
    assert t_cdf(two_sided_95, df) == pytest.approx(0.975, abs=2e-5)  # the table rounds to 4 digits


def test_incomplete_beta_closed_forms():
    # I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 - (1 - x)^b
    for x in (0.1, 0.5, 0.93):
        assert incomplete_beta(1, 1, x) == pytest.approx(x, abs=1e-12)
        assert incomplete_beta(3, 1, x) == pytest.approx(x**3, abs=1e-12)
        assert incomplete_beta(1, 4, x) == pytest.approx(1 - (1 - x) ** 4, abs=1e-12)


def test_sign_flip_is_exact():
    assert sign_flip_p([1.0] * 8) == pytest.approx(2 / 256)  # the smallest p 8 seeds can give
    assert sign_flip_p([1.0, -1.0]) == 1.0
    # [3, 1, 1]: |sum| >= 5 for (+,+,+) and (-,-,-) only; |sum| = 3 for (+,+,-), (+,-,+) and their negations
    assert sign_flip_p([3.0, 1.0, 1.0]) == pytest.approx(2 / 8)
    assert sign_flip_p([3.0, 1.0, -1.0]) == pytest.approx(6 / 8)


def test_paired_summary_interval():
    diffs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    s = paired_summary(diffs)
    sd = math.sqrt(sum((d - 4.5) ** 2 for d in diffs) / 7)
    assert s.mean == 4.5 and s.sd == pytest.approx(sd)
    assert s.ci_high - s.mean == pytest.approx(2.3646 * sd / math.sqrt(8), abs=1e-3)
    assert s.excludes_zero() and s.p_sign_flip == pytest.approx(2 / 256)
    assert not paired_summary([1.0, -1.0, 0.5, -0.5]).excludes_zero()
    with pytest.raises(ValueError):
        paired_summary([1.0])


def test_holm_and_mde():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})  # 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert holm({"x": 0.6, "y": 0.5}) == {"y": 1.0, "x": 1.0}
    # 8 seeds, SD 2 points: (2.3646 + 0.8960) * 2 / sqrt(8) = 2.306
    assert minimum_detectable_effect(2.0, 8) == pytest.approx(2.306, abs=1e-3)


def test_steps_to_reach_and_spearman():
    steps, curve = [0, 8, 16, 24], [0.40, 0.50, 0.60, 0.62]
    assert steps_to_reach(steps, curve, 0.55) == pytest.approx(12.0)
    assert steps_to_reach(steps, curve, 0.40) == 0.0
    assert steps_to_reach(steps, curve, 0.70) == math.inf
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # ties get mean ranks
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_benchmark_rows_get_wilson_intervals_over_their_problems():
    """Greedy: the binomial interval of correct / problems. Sampled pass@1 (a mean of per-problem rates): the same
    interval at its accuracy, never the narrower one that would count every sample as independent."""
    import polars as pl

    from learnalign_pipeline.core.evaluation.benchmark import with_intervals
    from learnalign_pipeline.core.evaluation.charts import wilson_interval

    table = with_intervals(pl.DataFrame({"num_problems": [6, 6], "num_correct": [1, 4], "accuracy": [1 / 6, 4 / 12]}))
    greedy, sampled = table.row(0, named=True), table.row(1, named=True)
    assert (greedy["low"], greedy["high"]) == pytest.approx(wilson_interval(1, 6))
    assert (sampled["low"], sampled["high"]) == pytest.approx(wilson_interval(2, 6))
    assert sampled["high"] - sampled["low"] > wilson_interval(4, 12)[1] - wilson_interval(4, 12)[0]
