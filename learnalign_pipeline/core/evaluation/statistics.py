"""Paired statistics for experiments with few seeds, in pure Python (scipy is not a dependency).

* Student's t quantile: the t CDF through the regularized incomplete beta function (Lentz's continued fraction),
  inverted by bisection; exact to ~1e-10.
* An exact sign-flip (randomization) test of a paired mean: all 2^n sign patterns, so with n seeds the smallest
  two-sided p is 2 / 2^n (8 seeds: 0.0078).
* Holm's step-down adjustment across a family of tests.
* Steps to reach a threshold on a learning curve (linear interpolation), and Spearman's rank correlation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


def _continued_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1 / guard(1 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 / guard(1 + numerator * d)
            c = guard(1 + numerator / c)
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            return h
    raise ArithmeticError("incomplete beta: continued fraction did not converge")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _continued_fraction(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom."""
    if not 0 < q < 1:
        raise ValueError("q must be in (0, 1)")
    low, high = -1e4, 1e4
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < q else (low, middle)
    return (low + high) / 2


def sign_flip_p(differences: Sequence[float]) -> float:
    """Two-sided exact p of the mean paired difference under random sign flips (under H0 each seed's difference is
    as likely positive as negative): the share of the 2^n patterns with |sum| at least the observed one."""
    observed = abs(sum(differences)) - 1e-12 * (1 + sum(abs(d) for d in differences))
    patterns = list(itertools.product((1, -1), repeat=len(differences)))
    extreme = sum(abs(sum(s * d for s, d in zip(signs, differences))) >= observed for signs in patterns)
    return extreme / len(patterns)


@dataclass(frozen=True)
class PairedSummary:
    seeds: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p_sign_flip: float

    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def paired_summary(differences: Sequence[float], level: float = 0.95) -> PairedSummary:
    """Mean of per-seed paired differences with its t-interval (df = n - 1) and the exact sign-flip p."""
    n = len(differences)
    if n < 2:
        raise ValueError("a paired summary needs at least two seeds")
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return PairedSummary(n, mean, sd, mean - half, mean + half, sign_flip_p(differences))


def minimum_detectable_effect(sd: float, seeds: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The paired mean difference a two-sided t-test at `alpha` detects with probability `power` (the usual
    approximation (t_{1-alpha/2} + t_{power}) * sd / sqrt(n), df = n - 1)."""
    df = seeds - 1
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * sd / math.sqrt(seeds)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, made monotone, capped at 1), same keys."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    adjusted, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[key]))
        adjusted[key] = running
    return adjusted


def steps_to_reach(steps: Sequence[float], values: Sequence[float], threshold: float) -> float:
    """The first step at which a curve (points in step order, linearly interpolated) reaches `threshold`; inf if it
    never does."""
    for i, (step, value) in enumerate(zip(steps, values)):
        if value >= threshold:
            if i == 0:
                return float(step)
            s0, v0 = steps[i - 1], values[i - 1]
            return s0 + (threshold - v0) * (step - s0) / (value - v0)
    return math.inf


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties share their mean rank
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on mean ranks); nan when either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    n = len(rx)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx and vy else math.nan
