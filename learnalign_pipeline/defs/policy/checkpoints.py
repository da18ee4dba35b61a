"""Training a policy inside an asset and publishing it as a checkpoint directory."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl

from ...core.artifacts import Checkpoint
from ...core.policy import count_parameters, save_policy
from ..metadata import markdown_table
from ..resources import ArtifactStore
from ..versioning import versioned


def publish_checkpoint(store: ArtifactStore, model, tokenizer, history: list[dict], config: dict, **metadata) -> dg.Output:
    """Save model, tokenizer, training log (Parquet) and config (JSON) to staging; the IO manager publishes it."""
    staging = store.staging_dir()
    save_policy(model, tokenizer, staging)
    log = pl.DataFrame(history) if history else pl.DataFrame({"step": []}, schema={"step": pl.Int64})
    # Wall-clock times stay out of the checkpoint so identical training gives an identical digest.
    log.drop("seconds", strict=False).write_parquet(staging / "training_log.parquet")
    (staging / "training_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    every = max(1, log.height // 10)
    curve = log.filter(pl.col("step") % every == 0) if log.height else log
    return versioned(
        Checkpoint(staging),
        parameters=count_parameters(model),
        training_steps=log.height,
        training_curve=dg.MetadataValue.md(markdown_table(curve, max_rows=12)),
        **metadata,
    )
