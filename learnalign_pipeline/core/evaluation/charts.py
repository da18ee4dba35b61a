"""Small PNG charts of what an RL engineer asks of each stage: how training went, how p and the scores are spread,
where the subset sits in the pool, how accuracy differs by family. Pure functions of tables (matplotlib, Agg), a
few kilobytes each, so they fit in a materialization's metadata (lib/charts.py embeds them)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import polars as pl

# The training-log columns worth a panel, in reading order, with their axis label.
CURVES = {
    "reward_mean": "reward (mean over samples)",
    "loss": "loss",
    "kl": "KL to the reference",
    "grad_norm": "gradient norm (before clipping)",
    "frac_reward_zero_std": "share of groups with zero reward variance",
    "lr": "learning rate",
}
P_BUCKETS = ["0", "(0, .25]", "(.25, .5]", "(.5, .75]", "(.75, 1)", "1"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _bar_chart_png(fig, ax, title: str, legend: bool) -> bytes:
    """The bar charts' common finish: title, small ticks, horizontal grid, optional legend, PNG bytes."""
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if legend:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _png(fig)


def training_curves(log: pl.DataFrame, title: str) -> bytes | None:
    """One panel per logged quantity against the step, every step (the last included); None for an empty log."""
    columns = [c for c in CURVES if c in log.columns and log[c].drop_nulls().len()]
    if not log.height or not columns:
        return None
    plt = _pyplot()
    cols = min(3, len(columns))
    rows = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.4 * rows), squeeze=False)
    steps = log["step"].to_list()
    for ax, column in zip(axes.flat, columns):
        ax.plot(steps, log[column].to_list(), marker="." if log.height <= 30 else None, linewidth=1.2)
        ax.set_title(CURVES[column], fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def histogram(
    values: Sequence[float], title: str, xlabel: str, bins: int | Sequence[float] = 20, cutoff: float | None = None
) -> bytes:
    """Counts of `values`; `cutoff` draws a vertical line (the subset's cut-off score)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(list(values), bins=bins, color="#4c72b0", edgecolor="white")
    if cutoff is not None:
        ax.axvline(cutoff, color="#c44e52", linestyle="--", linewidth=1.2, label=f"cut-off {cutoff:.3g}")
        ax.legend(fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("problems", fontsize=8)
    return _bar_chart_png(fig, ax, title, legend=False)


def p_bucket(p: pl.Expr) -> pl.Expr:
    """The success-rate bucket of P_BUCKETS a rate falls in (any K)."""
    return (
        pl.when(p == 0)
        .then(pl.lit(P_BUCKETS[0]))
        .when(p <= 0.25)
        .then(pl.lit(P_BUCKETS[1]))
        .when(p <= 0.5)
        .then(pl.lit(P_BUCKETS[2]))
        .when(p <= 0.75)
        .then(pl.lit(P_BUCKETS[3]))
        .when(p < 1)
        .then(pl.lit(P_BUCKETS[4]))
        .otherwise(pl.lit(P_BUCKETS[5]))
    )


def shares(frame: pl.DataFrame, column: str, order: Sequence[str] | None = None) -> pl.DataFrame:
    """(value, problems, share) of one column, in `order` when given (missing values count 0), else sorted."""
    counts = frame.group_by(column).len().rename({column: "value", "len": "problems"})
    counts = counts.with_columns(pl.col("value").cast(pl.String).fill_null("(none)"))
    values = list(order) if order is not None else sorted(counts["value"].to_list())
    full = pl.DataFrame({"value": values}).join(counts, on="value", how="left").fill_null(0)
    total = max(frame.height, 1)
    return full.with_columns((pl.col("problems") / total).alias("share"))


def subset_vs_pool(pool: pl.DataFrame, subset: pl.DataFrame, title: str, xlabel: str) -> bytes:
    """Side-by-side bars: each value's share of the pool and of the subset (frames from `shares`)."""
    plt = _pyplot()
    labels = pool["value"].to_list()
    by_value = dict(zip(subset["value"].to_list(), subset["share"].to_list()))
    x = range(len(labels))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(labels) + 2), 2.8))
    ax.bar(
        [i - 0.2 for i in x],
        pool["share"].to_list(),
        width=0.4,
        label=f"pool ({pool['problems'].sum()})",
        color="#999999",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [by_value.get(v, 0.0) for v in labels],
        width=0.4,
        label=f"subset ({subset['problems'].sum()})",
        color="#4c72b0",
    )
    ax.set_xticks(list(x), labels, fontsize=7, rotation=30 if len(labels) > 6 else 0)
    ax.set_ylabel("share", fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    return _bar_chart_png(fig, ax, title, legend=True)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96); (nan, nan) for n = 0. Unlike the
    normal interval it stays inside [0, 1] and is honest at 0 or n successes, common for a small family."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def accuracy_by_family(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Per (policy, family): problems, correct, accuracy and its Wilson 95% interval, from one row per
    (policy, problem) with `category` and `reward` (greedy decoding: reward 1 = correct)."""
    grouped = (
        outcomes.with_columns(pl.col("category").cast(pl.String).fill_null("(none)").alias("family"))
        .group_by("policy", "family")
        .agg(pl.len().alias("problems"), pl.col("reward").sum().cast(pl.Int64).alias("correct"))
        .sort("policy", "family")
    )
    bounds = [wilson_interval(c, n) for c, n in zip(grouped["correct"].to_list(), grouped["problems"].to_list())]
    return grouped.with_columns(
        (pl.col("correct") / pl.col("problems")).alias("accuracy"),
        pl.Series("low", [b[0] for b in bounds]),
        pl.Series("high", [b[1] for b in bounds]),
    )


def accuracy_chart(table: pl.DataFrame, title: str) -> bytes:
    """Accuracy per family, one bar per policy, with the Wilson interval as error bars (table from
    `accuracy_by_family`)."""
    plt = _pyplot()
    families = sorted(table["family"].unique().to_list())
    policies = list(dict.fromkeys(table["policy"].to_list()))
    width = 0.8 / max(len(policies), 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(families) + 2), 3))
    for j, policy in enumerate(policies):
        rows = {r["family"]: r for r in table.filter(pl.col("policy") == policy).iter_rows(named=True)}
        xs = [i + (j - (len(policies) - 1) / 2) * width for i in range(len(families))]
        acc = [rows[f]["accuracy"] if f in rows else float("nan") for f in families]
        # clamped at 0: at 0 or n successes the interval's end equals the accuracy up to float rounding, and
        # matplotlib refuses a negative error bar
        low = [max(0.0, a - rows[f]["low"]) if f in rows else 0 for a, f in zip(acc, families)]
        high = [max(0.0, rows[f]["high"] - a) if f in rows else 0 for a, f in zip(acc, families)]
        ax.bar(xs, acc, width=width, yerr=[low, high], capsize=2, label=policy, error_kw={"linewidth": 0.8})
    ax.set_xticks(range(len(families)), families, fontsize=7, rotation=30 if len(families) > 6 else 0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("greedy pass@1", fontsize=8)
    return _bar_chart_png(fig, ax, title, legend=True)
