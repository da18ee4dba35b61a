"""Charts and tables in materialization metadata, the way the Dagster 1.13 UI shows them (checked in headless
Chromium, tests/integration/test_daily_loop.py):

- an image: markdown with a data-URI PNG ("[Show Markdown]" opens it);
- a trend across materializations: a plain number (the asset's Overview -> Metadata -> "Plots" draws one chart per
  numeric key), so keep key figures as numbers, rounded, not inside text;
- a table: `MetadataValue.table` with column descriptions; every table asset's columns are described through
  `dagster/column_schema` (`column_schema`).
"""

from __future__ import annotations

import base64
import math

import dagster as dg
import polars as pl

# What each column of the pipeline's tables means (dagster/column_schema descriptions, the UI's "Columns").
COLUMN_DESCRIPTIONS = {
    "problem_id": "content hash of (prompt, gold answer): the same problem has the same id in every file and run",
    "source": "the file (or generator) the row came from",
    "split": "pool (candidates for selection) or test (held-out benchmark)",
    "row_index": "position in the source file, for tracing a row back",
    "prompt": "the question, without any template",
    "answer": "normalized gold answer the verifier compares against",
    "solution": "reference worked solution; null when the source has none",
    "category": "family: the category column, GSM8K's solution step count, MATH's subject, or the generator's family",
    "extra": "JSON of the source's other fields, kept for tracing",
    "location": "file:line (JSONL) or file:row n of the rejected row",
    "kind": "machine-readable rejection reason",
    "reason": "why the row was rejected, in words",
    "raw": "the row as read, truncated",
    "sample_index": "which of the K samples of the problem",
    "seed": "sampling seed of this completion (derived from the base seed and the problem id)",
    "completion": "the generated text",
    "token_ids": "the generated token ids",
    "num_tokens": "completion length in tokens",
    "finish_reason": "stop (an EOS id or stop string) or length (hit max_new_tokens)",
    "reward": "1 if the verifier accepted the completion's answer, else 0",
    "num_samples": "K: completions sampled for the problem",
    "num_correct": "completions the verifier accepted",
    "success_rate": "p: share of the K completions that were correct",
    "mean_completion_tokens": "mean completion length in tokens",
    "learnability": "V = p(1 - p): 0 when always or never solved, 0.25 at p = 1/2",
    "alignment": "<u_i, mu>: cosine-like agreement of the problem's projected gradient with the V-weighted mean",
    "score": "the selection score (LearnAlign: V_i <u_i, mu>); higher is selected first",
    "rank": "1 = best score; the subset is ranks 1..N",
    "noisy": "the pool config corrupted this problem's gold answer (noisy-reward experiments)",
    "policy": "which checkpoint: pretrained, warmup or trained",
    "benchmark": "source:split of the benchmark problems",
    "num_problems": "problems evaluated",
    "accuracy": "pass@1: greedy accuracy, or the mean over n samples per problem",
    "template": "prompt template the accuracy was measured with",
    "decoding": "greedy, or sampled n / temperature / top-p",
    "max_new_tokens": "completion length limit",
    "verifier": "answer checker (numeric_flexible, numeric_strict, math_verify)",
    "backend": "generation engine (transformers or vllm)",
    "checkpoint": "content digest directory of the evaluated checkpoint",
}


def significant(value: float, digits: int = 4) -> float:
    """A float rounded to `digits` significant digits (the UI prints floats verbatim: 0.30000000000000004)."""
    if value is None or not math.isfinite(value) or value == 0:
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def image(png: bytes | None, alt: str) -> dg.MetadataValue | None:
    """A PNG as markdown metadata the UI renders as an image; None passes through (nothing to draw)."""
    if png is None:
        return None
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, str(dtype), description=COLUMN_DESCRIPTIONS.get(name))
            for name, dtype in frame.schema.items()
        ]
    )


def table(frame: pl.DataFrame, max_rows: int = 50, descriptions: dict[str, str] | None = None) -> dg.MetadataValue:
    """A small table (first `max_rows` rows) with rounded floats and column descriptions."""
    head = frame.head(max_rows)
    kinds = {pl.Float32: "float", pl.Float64: "float", pl.Int32: "int", pl.Int64: "int", pl.Boolean: "bool"}
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                kinds.get(dtype.base_type(), "string"),
                description=(descriptions or {}).get(name, COLUMN_DESCRIPTIONS.get(name)),
            )
            for name, dtype in head.schema.items()
        ]
    )

    def cell(value):
        if isinstance(value, float):
            return significant(value)
        return value if value is None or isinstance(value, (int, bool)) else str(value)

    records = [dg.TableRecord({k: cell(v) for k, v in row.items()}) for row in head.iter_rows(named=True)]
    return dg.MetadataValue.table(records=records, schema=schema)


def present(**metadata) -> dict:
    """Metadata without the entries that are None (a chart with nothing to draw)."""
    return {k: v for k, v in metadata.items() if v is not None}
