"""Small helpers that turn results into metadata the Dagster UI renders (keep values small: they live in the event log)."""

from __future__ import annotations

import dagster as dg
import polars as pl


def markdown_table(frame: pl.DataFrame, max_rows: int = 20, float_digits: int = 4) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.{float_digits}f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    head = frame.head(max_rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    if frame.height > max_rows:
        lines.append(f"\n({frame.height - max_rows} more rows)")
    return "\n".join(lines)


def problem_summary(frame: pl.DataFrame) -> dict:
    counts = frame.group_by("category").len().sort("category")
    return {
        "category_counts": dg.MetadataValue.json(dict(zip(counts["category"].to_list(), counts["len"].to_list()))),
        "preview": dg.MetadataValue.md(markdown_table(frame.select("problem_id", "prompt", "answer", "category"), max_rows=5)),
    }
