"""The method comparison: the results table shaped like LearnAlign's Table A (rows: methods, columns: budgets,
mean ± spread over seeds) and the accuracy-vs-budget plot."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def summarize(results: pl.DataFrame) -> pl.DataFrame:
    """Mean, sample std and count of accuracy per (method, budget), over seeds."""
    return (
        results.group_by("method", "budget")
        .agg(
            pl.col("accuracy").mean().alias("mean"),
            pl.col("accuracy").std().fill_null(0.0).alias("std"),
            pl.len().alias("seeds"),
            pl.col("noisy_share").mean().alias("noisy_share"),
        )
        .sort("method", "budget")
    )


def table_a(summary: pl.DataFrame, method_order: list[str], extra_rows: dict[str, str] | None = None) -> str:
    """Markdown: one row per method, one column per budget, cells `mean ± std` in accuracy points."""
    budgets = sorted(summary["budget"].unique().to_list())
    lines = ["| method | " + " | ".join(f"N={b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    cells = {
        (m, b): (mu, sd, n)
        for m, b, mu, sd, n in summary.select("method", "budget", "mean", "std", "seeds").iter_rows()
    }
    for method in method_order:
        row = []
        for b in budgets:
            if (method, b) in cells:
                mu, sd, n = cells[(method, b)]
                row.append(f"{100 * mu:.1f} ± {100 * sd:.1f}")
            else:
                row.append("")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    for name, text in (extra_rows or {}).items():
        lines.append(f"| {name} | " + " | ".join([text] * len(budgets)) + " |")
    return "\n".join(lines)


def plot_accuracy_vs_budget(
    summary: pl.DataFrame, method_order: list[str], path: Path, title: str, baselines: dict[str, float] | None = None
) -> Path:
    """Accuracy (mean ± std over seeds) against budget, one line per method; horizontal lines for references."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for method in method_order:
        rows = summary.filter(pl.col("method") == method).sort("budget")
        if rows.height == 0:
            continue
        x, mu, sd = rows["budget"].to_list(), [100 * v for v in rows["mean"]], [100 * v for v in rows["std"]]
        ax.errorbar(x, mu, yerr=sd, marker="o", capsize=3, label=method)
    for (name, value), style in zip((baselines or {}).items(), [":", "--", "-."] * 4):
        ax.axhline(100 * value, linestyle=style, linewidth=1, color="gray", label=f"{name}: {100 * value:.1f}")
    ax.set_xscale("log", base=2)
    budgets = sorted(summary["budget"].unique().to_list())
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("budget N (problems selected)")
    ax.set_ylabel("benchmark greedy pass@1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
