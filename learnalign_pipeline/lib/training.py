"""GRPO and pre-training inside assets: the run-config views of core's training settings, the reference model,
and publishing a trained policy as a checkpoint directory (resumable after a kill)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import dagster as dg
import polars as pl

from ..core.data.arithmetic import pretraining_corpus
from ..core.policy.model import TinyPolicyConfig, count_parameters, load_policy, save_policy
from ..core.storage.artifacts import Checkpoint, content_digest
from ..core.training.config import LOSS_FIELDS, GRPOConfig, PretrainConfig
from ..core.training.grpo import GRPOLossConfig
from ..core.training.resume import ResumeDirectory, resume_key
from ..core.training.sft import pretrain_tiny_policy
from ..core.training.trainer import train_grpo
from .config import config_view, settings
from .outputs import markdown_table, versioned
from .progress import step_progress
from .resources import ArtifactStore, GRPOLoss, TaskSettings


def grpo_stage_config(**defaults) -> type:
    """The run config of a GRPO stage: GRPOConfig's schedule, sampling and optimisation fields, with this stage's
    `defaults`. The loss and its reference come from the shared `grpo_loss` resource, so every stage trains the
    same loss and the gradient features differentiate it."""
    return config_view(GRPOConfig, exclude=set(LOSS_FIELDS), defaults=defaults)


class GRPOStageConfig(grpo_stage_config()):
    """On-policy GRPO (core/training/config.py GRPOConfig documents every field)."""


class PretrainRunConfig(config_view(PretrainConfig, TinyPolicyConfig, exclude={"warmup_steps", "max_positions"})):
    """The base policy: the built-in Qwen2-architecture policy pre-trained here on generated worked solutions
    (model shape: core/policy/model.py TinyPolicyConfig; training: core/training/config.py PretrainConfig), or with
    `model_path` an existing `save_pretrained` directory (a real model) used as is."""


def grpo_settings(config: dg.Config, grpo_loss: GRPOLoss, **overrides) -> GRPOConfig:
    """The core settings of one GRPO run: the stage's fields, the shared loss, `overrides` (e.g. a seed)."""
    return dataclasses.replace(settings(config, GRPOConfig, **grpo_loss.model_dump()), **overrides)


def pretrain_settings(config: PretrainRunConfig) -> tuple[PretrainConfig, TinyPolicyConfig]:
    return settings(config, PretrainConfig), settings(config, TinyPolicyConfig)


def pretrain_checkpoint(
    context, config: PretrainRunConfig, task: TaskSettings, store: ArtifactStore, exclude_ids, corpus_mix, **recorded
) -> dg.Output:
    """Pre-train the built-in tiny policy on a corpus drawn from `corpus_mix` without the problems in `exclude_ids` (the
    held-out ones), with a progress bar; `recorded` joins the config in the checkpoint's training_config.json."""
    pretrain, spec = pretrain_settings(config)
    questions, targets = pretraining_corpus(
        pretrain.corpus_size, pretrain.corpus_seed, pretrain.shortcut_rates, exclude_ids=exclude_ids, mix=corpus_mix
    )
    started = time.perf_counter()
    with step_progress(context, pretrain.steps, "pre-training steps") as progress:
        model, tokenizer, history = pretrain_tiny_policy(
            questions, targets, spec, pretrain, task.template, log=progress
        )
    return publish_checkpoint(
        store,
        model,
        tokenizer,
        history,
        config.model_dump() | recorded,
        summary=f"{len(history)} steps, final loss {history[-1]['loss']:.3f}",
        corpus_examples=len(questions),
        vocab_size=len(tokenizer),
        final_loss=float(history[-1]["loss"]),
        train_seconds=round(time.perf_counter() - started, 1),
    )


def reference_checkpoint(grpo_loss: GRPOLoss, start: Checkpoint, base: Checkpoint) -> Checkpoint:
    """The KL reference of a GRPO stage that starts from `start`, and of gradient features scored at `start`: the
    one `reference` setting decides it for training and features alike."""
    return start if grpo_loss.reference == "stage_start" else base


def reference_model(loss: GRPOLossConfig, reference: Checkpoint, scored: Checkpoint, model):
    """The frozen reference model for features of `model` (loaded from `scored`): None without a KL term, the model
    itself when it is its own reference (no second copy is loaded)."""
    if not loss.beta:
        return None
    return model if reference.path == scored.path else load_policy(reference.path)[0]


def publish_checkpoint(
    store: ArtifactStore,
    model,
    tokenizer,
    history: list[dict],
    config: dict,
    *,
    output_name: str = "result",
    **metadata,
) -> dg.Output:
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
        output_name=output_name,
        parameters=count_parameters(model),
        training_steps=log.height,
        training_curve=dg.MetadataValue.md(markdown_table(curve, max_rows=12)),
        **metadata,
    )


def train_from(start: Checkpoint, base: Checkpoint, grpo: GRPOConfig, problems, task: TaskSettings, **train_options):
    """(model, tokenizer, history): GRPO from `start` on `problems`, with the KL reference `grpo.reference` names."""
    model, tokenizer = load_policy(start.path)
    reference = load_policy(base.path)[0] if grpo.reference == "base" and grpo.beta else None
    history = train_grpo(
        model, tokenizer, problems, task.make_verifier(), grpo, task.config(), reference=reference, **train_options
    )
    return model, tokenizer, history


def grpo_stage(
    context,
    config: dg.Config,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    store: ArtifactStore,
    start: Checkpoint,
    base: Checkpoint,
    problems: pl.DataFrame,
    **recorded,
) -> dg.Output:
    """GRPO from checkpoint `start` (`base`: the pre-trained policy, the KL reference when `reference` is "base")
    on `problems` with a GRPO stage config; publishes the result. `recorded` goes into the checkpoint's
    training_config.json next to the stage config and the loss."""
    grpo = grpo_settings(config, grpo_loss)
    resume = ResumeDirectory(
        resume_directory(context, store, start, base, problems, grpo, task), warn=context.log.warning
    )
    started = time.perf_counter()
    with step_progress(context, grpo.steps, "GRPO steps") as progress:
        model, tokenizer, history = train_from(start, base, grpo, problems, task, log=progress, resume=resume)
    if resume.resumed_from_step:
        context.log.info(f"resumed from the training state after step {resume.resumed_from_step} in {resume.path}")
    output = publish_checkpoint(
        store,
        model,
        tokenizer,
        history,
        {
            **config.model_dump(exclude={"checkpoint_every"}),
            "loss": grpo_loss.model_dump(),
            "start": start.path.name,
            **recorded,
        },
        summary=f"reward {history[0]['reward_mean']:.2f} -> {history[-1]['reward_mean']:.2f} over {len(history)} steps",
        problems=problems.height,
        reward_first_step=history[0]["reward_mean"],
        reward_last_step=history[-1]["reward_mean"],
        nonfinite_problems_excluded=sum(r["nonfinite_problems"] for r in history),
        resumed_from_step=resume.resumed_from_step,
        train_seconds=round(time.perf_counter() - started, 1),
    )
    resume.clear()  # the result is complete; its states are no longer needed
    return output


def resume_directory(
    context,
    store: ArtifactStore,
    start: Checkpoint,
    base: Checkpoint,
    problems: pl.DataFrame,
    grpo: GRPOConfig,
    task: TaskSettings,
) -> Path:
    """`<artifacts>/.resume/<asset>/<key>`: the key hashes everything the trained weights depend on (start and
    reference checkpoints, problems, GRPO settings, task, code version), so a rerun of the same stage finds its
    states and any change starts fresh. `checkpoint_every` is left out: it does not change the result."""
    key = resume_key(
        asset=context.asset_key.to_user_string(),
        code_version=context.assets_def.code_versions_by_key.get(context.asset_key),
        start=start.path.name,  # content-addressed: the start checkpoint's digest prefix, verified on load
        reference=base.path.name if grpo.reference == "base" else None,
        problems=content_digest(problems),
        grpo={k: v for k, v in dataclasses.asdict(grpo).items() if k != "checkpoint_every"},
        task=dataclasses.asdict(task.config()),
    )
    return Path(store.root) / ".resume" / context.asset_key.to_user_string() / key[:24]
