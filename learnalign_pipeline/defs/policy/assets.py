"""The policies: the base policy (the built-in tiny policy pre-trained here, or a given checkpoint), the GRPO
warm-up policy (LearnAlign step 1) and the policy RL-trained on the selected subset."""

import json
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from ...core.data.arithmetic import MIXES
from ...core.policy.gguf import is_gguf
from ...core.policy.model import copy_checkpoint
from ...core.storage.artifacts import Checkpoint
from ...lib.outputs import versioned
from ...lib.resources import ArithmeticSettings, ArtifactStore, ComputeSettings, GRPOLoss, TaskSettings, TrainerSettings
from ...lib.tags import gpu_step
from ...lib.training import PretrainRunConfig, grpo_stage, grpo_stage_config, pretrain_checkpoint


@dg.asset(group_name="policy", code_version="2", **gpu_step("transformers"))
def pretrained_policy(
    context: dg.AssetExecutionContext,
    config: PretrainRunConfig,
    task: TaskSettings,
    store: ArtifactStore,
    arithmetic: ArithmeticSettings,
    benchmark_problems: pl.DataFrame,
) -> dg.Output[Checkpoint]:
    """The base policy. Built-in: the tiny policy pre-trained on a generated corpus (drawn from the `arithmetic`
    resource's mix) that excludes every benchmark problem. With `model_path`: a copy of that checkpoint, so every
    later stage reads a versioned artifact."""
    if config.model_path and is_gguf(config.model_path):  # converted once per file content, then copied
        converted, digest = store.converted_gguf(config.model_path)
        staging = store.staging_dir()
        parameters = copy_checkpoint(converted, staging)
        (staging / "training_config.json").write_text(json.dumps(config.model_dump(), indent=2, sort_keys=True))
        return versioned(
            Checkpoint(staging),
            source=config.model_path,
            source_sha256=digest,
            converted_from="gguf",
            parameters=parameters,
            summary=f"converted {Path(config.model_path).name} (GGUF, sha256 {digest[:12]})",
        )
    if config.model_path:  # copied byte for byte: the base model keeps its dtype, and nothing is loaded
        staging = store.staging_dir()
        parameters = copy_checkpoint(config.model_path, staging)
        (staging / "training_config.json").write_text(json.dumps(config.model_dump(), indent=2, sort_keys=True))
        return versioned(
            Checkpoint(staging), source=config.model_path, parameters=parameters, summary=f"copied {config.model_path}"
        )
    mix = arithmetic.mix
    return pretrain_checkpoint(
        context,
        config,
        task,
        store,
        frozenset(benchmark_problems["problem_id"].to_list()),
        MIXES[mix],
        **({"mix": mix} if mix != "default" else {}),
    )


class WarmupConfig(grpo_stage_config(steps=4, problems_per_step=16, on_no_signal="warn")):
    """GRPO on a small random subset of the pool before scoring (LearnAlign step 1: cold-start gradients are noisy);
    4 x 16 = one epoch of the subset. A warm-up without reward signal is published (the scoring policy is then the
    pre-trained one) and says so on the console."""

    subset_size: int = Field(default=64, ge=1, description="random pool problems the warm-up trains on")


@dg.asset(group_name="policy", code_version="5", **gpu_step("transformers"))
def warmup_policy(
    context: dg.AssetExecutionContext,
    config: WarmupConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    trainer: TrainerSettings,
    compute: ComputeSettings,
    store: ArtifactStore,
    raw_problems: pl.DataFrame,
    pretrained_policy: Checkpoint,
) -> dg.Output[Checkpoint]:
    """The pre-trained policy after a short GRPO run on a seeded random subset of the pool."""
    subset = raw_problems.sample(n=min(config.subset_size, raw_problems.height), seed=config.seed, shuffle=True)
    return grpo_stage(
        context,
        config,
        task,
        grpo_loss,
        trainer,
        compute,
        store,
        pretrained_policy,
        pretrained_policy,
        subset,
        subset_ids=subset["problem_id"].to_list(),
    )


class TrainingConfig(grpo_stage_config()):
    """GRPO on the selected subset: 60 steps x 32 problems x 8 samples (7.5 epochs of a 256-problem subset)."""


@dg.asset(group_name="training", code_version="5", **gpu_step("transformers"))
def trained_policy(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    trainer: TrainerSettings,
    compute: ComputeSettings,
    store: ArtifactStore,
    selected_subset: pl.DataFrame,
    warmup_policy: Checkpoint,
    pretrained_policy: Checkpoint,
) -> dg.Output[Checkpoint]:
    """The RL-trained checkpoint (`save_pretrained` directory with tokenizer and training log). The pre-trained
    policy is an input because it is the KL reference when `grpo_loss.reference` is "base"."""
    return grpo_stage(
        context, config, task, grpo_loss, trainer, compute, store, warmup_policy, pretrained_policy, selected_subset
    )
