"""Training a policy inside an asset and publishing it as a checkpoint directory."""

from __future__ import annotations

import json
import time

import dagster as dg
import polars as pl

from ...core.artifacts import Checkpoint
from ...core.policy import count_parameters, load_policy, save_policy
from ...core.trainer import train_grpo
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


def grpo_stage(context, config, task, grpo_loss, store: ArtifactStore, start: Checkpoint, problems: pl.DataFrame, **recorded) -> dg.Output:
    """GRPO from checkpoint `start` on `problems` with a `GRPOStageConfig`; publishes the result. `recorded` goes
    into the checkpoint's training_config.json next to the stage config and the loss."""
    model, tokenizer = load_policy(start.path)
    started = time.perf_counter()
    history = train_grpo(model, tokenizer, problems, task.make_verifier(), config.train_config(task, grpo_loss), log=context.log.debug)
    return publish_checkpoint(
        store,
        model,
        tokenizer,
        history,
        {**config.model_dump(), "loss": grpo_loss.model_dump(), "start": start.path.name, **recorded},
        problems=problems.height,
        reward_first_step=history[0]["reward_mean"],
        reward_last_step=history[-1]["reward_mean"],
        nonfinite_problems_excluded=sum(r["nonfinite_problems"] for r in history),
        train_seconds=round(time.perf_counter() - started, 1),
    )
