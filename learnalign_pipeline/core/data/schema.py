"""The normalized problem table every loader produces and every stage reads.

One row per problem. `problem_id` is a content hash of (prompt, answer), so the same problem gets the same
id in every run, every source file and every split; downstream artifacts key on it.
"""

from __future__ import annotations

import polars as pl

PROBLEM_SCHEMA: dict[str, pl.DataType] = {
    "problem_id": pl.String(),  # sha256(prompt, answer)[:16]
    "source": pl.String(),  # dataset name or file the row came from
    "split": pl.String(),  # "pool" (candidates for selection) or "test" (held-out benchmark)
    "row_index": pl.Int64(),  # position in the source, for tracing a row back
    "prompt": pl.String(),  # the question, without any template
    "answer": pl.String(),  # normalized gold answer the verifier compares against
    "solution": pl.String(),  # reference worked solution, null when the source has none
    "category": pl.String(),  # family / level / subject, null when unknown
    "extra": pl.String(),  # JSON object of the source's other fields, kept for tracing; "{}" when none
}


def empty_problems() -> pl.DataFrame:
    return pl.DataFrame(schema=PROBLEM_SCHEMA)


def validate_problems(frame: pl.DataFrame) -> pl.DataFrame:
    """Return `frame` with exactly the problem schema (column order and types) or raise naming the gap."""
    missing = [c for c in PROBLEM_SCHEMA if c not in frame.columns]
    if missing:
        raise ValueError(f"problem table lacks columns {missing}; it has {frame.columns}")
    frame = frame.select([pl.col(c).cast(t) for c, t in PROBLEM_SCHEMA.items()])
    duplicated = frame.filter(pl.col("problem_id").is_duplicated())
    if duplicated.height:
        raise ValueError(
            f"problem ids must be unique; {duplicated.height} rows share ids, e.g. {duplicated['problem_id'][0]}"
        )
    return frame
