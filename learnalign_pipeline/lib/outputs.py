"""Turning results into Dagster outputs and metadata the UI renders (keep values small: they live in the event
log), and into rows of the results database."""

from __future__ import annotations

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from ..core.storage.artifacts import content_digest
from .charts import significant

SUMMARY_KEY = "summary"  # a one-line key figure per stage; the CLI prints it when the stage ends


def versioned(value, *, output_name: str = "result", summary: str | None = None, **metadata) -> dg.Output:
    """An output whose data version is the sha256 of its content, so an unchanged result leaves its children fresh
    however often it is recomputed. `summary` is the stage's key figure in words, for the console and the UI."""
    if summary is not None:
        metadata[SUMMARY_KEY] = summary
    metadata = {k: significant(v) if isinstance(v, float) else v for k, v in metadata.items()}  # UI prints 17 digits
    return dg.Output(
        value, output_name=output_name, data_version=dg.DataVersion(content_digest(value)), metadata=metadata
    )


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
        "preview": dg.MetadataValue.md(
            markdown_table(frame.select("problem_id", "prompt", "answer", "category"), max_rows=5)
        ),
    }


def append_to_duckdb(duckdb: DuckDBResource, table_name: str, frame: pl.DataFrame) -> None:
    """Append `frame` to a table of the results database (created from the frame's columns on first use)."""
    with duckdb.get_connection() as conn:
        conn.register("incoming", frame.to_arrow())
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table_name} AS SELECT * FROM incoming LIMIT 0")
        conn.execute(f"INSERT INTO {table_name} BY NAME SELECT * FROM incoming")
        conn.unregister("incoming")
