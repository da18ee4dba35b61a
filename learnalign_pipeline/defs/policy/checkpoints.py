"""Training a policy inside an asset and publishing it as a checkpoint directory."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import dagster as dg
import polars as pl

from ...core.artifacts import Checkpoint, content_digest
from ...core.policy import count_parameters, load_policy, save_policy
from ...core.resume import ResumeDirectory, resume_key
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
    train_config = config.train_config(task, grpo_loss)
    resume = ResumeDirectory(resume_directory(context, store, start, problems, train_config, task), warn=context.log.warning)
    started = time.perf_counter()
    history = train_grpo(
        model, tokenizer, problems, task.make_verifier(), train_config, log=context.log.debug, resume=resume,
        checkpoint_every=config.checkpoint_every,
    )
    if resume.resumed_from_step:
        context.log.info(f"resumed from the training state after step {resume.resumed_from_step} in {resume.path}")
    output = publish_checkpoint(
        store,
        model,
        tokenizer,
        history,
        {**config.model_dump(exclude={"checkpoint_every"}), "loss": grpo_loss.model_dump(), "start": start.path.name, **recorded},
        problems=problems.height,
        reward_first_step=history[0]["reward_mean"],
        reward_last_step=history[-1]["reward_mean"],
        nonfinite_problems_excluded=sum(r["nonfinite_problems"] for r in history),
        resumed_from_step=resume.resumed_from_step,
        train_seconds=round(time.perf_counter() - started, 1),
    )
    resume.clear()  # the result is complete; its states are no longer needed
    return output


def resume_directory(context, store: ArtifactStore, start: Checkpoint, problems: pl.DataFrame, train_config, task) -> Path:
    """`<artifacts>/.resume/<asset>/<key>`: the key hashes everything the trained weights depend on (start
    checkpoint, problems, training and loss config, verifier, code version), so a rerun of the same stage finds
    its states and any change starts fresh. `checkpoint_every` is left out: it does not change the result."""
    key = resume_key(
        asset=context.asset_key.to_user_string(),
        code_version=context.assets_def.code_versions_by_key.get(context.asset_key),
        start=start.path.name,  # content-addressed: the start checkpoint's digest prefix, verified on load
        problems=content_digest(problems),
        train_config=dataclasses.asdict(train_config),
        verifier=[task.verifier, task.verifier_timeout_s],
    )
    return Path(store.root) / ".resume" / context.asset_key.to_user_string() / key[:24]
