"""The policies: the built-in pre-trained tiny policy and the GRPO warm-up policy (LearnAlign step 1)."""


import time

import dagster as dg
import polars as pl
from pydantic import Field

from ...core.arithmetic import DEFAULT_SHORTCUT_RATES, pretraining_corpus
from ...core.artifacts import Checkpoint
from ...core.policy import TinyPolicySpec, load_policy, pretrain_tiny_policy
from ...core.trainer import SFTConfig
from ..constants import gpu_step
from ..resources import ArtifactStore, GRPOLoss, TaskSettings
from .checkpoints import grpo_stage, publish_checkpoint
from .grpo_config import GRPOStageConfig


class PretrainConfig(dg.Config):
    """The base policy: by default the built-in Qwen2-architecture policy, pre-trained here on generated worked
    solutions; with `model_path`, an existing `save_pretrained` directory (a real model) used as is."""

    model_path: str | None = Field(
        default=None, description="a save_pretrained directory to use as the base policy instead of the built-in one"
    )
    corpus_size: int = Field(default=40_000, description="generated pre-training examples")
    corpus_seed: int = Field(default=3, description="generator seed of the corpus")
    shortcut_rates: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SHORTCUT_RATES),
        description="share of each family's examples that show a wrong shortcut solution (leaves room for RL)",
    )
    vocab_size: int = Field(default=512, description="BPE vocabulary limit")
    hidden_size: int = Field(default=128, description="model width (head_dim = hidden_size / num_heads = 64)")
    intermediate_size: int = Field(default=256, description="MLP width")
    num_layers: int = Field(default=2, description="transformer blocks")
    num_heads: int = Field(default=2, description="attention heads")
    num_kv_heads: int = Field(default=1, description="key/value heads (grouped-query attention)")
    steps: int = Field(default=1000, description="optimizer steps")
    batch_size: int = Field(default=64, description="examples per step")
    learning_rate: float = Field(default=3e-3, description="peak AdamW learning rate")
    seed: int = Field(default=0, description="seed of initialization and batch order")


@dg.asset(group_name="policy", code_version="1", **gpu_step("transformers"))
def pretrained_policy(
    context: dg.AssetExecutionContext, config: PretrainConfig, task: TaskSettings, store: ArtifactStore, benchmark_problems: pl.DataFrame
) -> dg.Output[Checkpoint]:
    """The base policy. Built-in: the tiny policy pre-trained on a generated corpus that excludes every benchmark
    problem. With `model_path`: a copy of that checkpoint, so every later stage reads a versioned artifact."""
    if config.model_path:
        model, tokenizer = load_policy(config.model_path)  # fails clearly if the path holds no checkpoint
        return publish_checkpoint(store, model, tokenizer, [], config.model_dump(), source=config.model_path)
    questions, targets = pretraining_corpus(
        config.corpus_size, config.corpus_seed, config.shortcut_rates, exclude_ids=frozenset(benchmark_problems["problem_id"].to_list())
    )
    spec = TinyPolicySpec(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
    )
    sft = SFTConfig(steps=config.steps, batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed)
    started = time.perf_counter()
    model, tokenizer, history = pretrain_tiny_policy(questions, targets, spec, sft, task.template, config.seed, log=context.log.info)
    return publish_checkpoint(
        store,
        model,
        tokenizer,
        history,
        config.model_dump(),
        corpus_examples=len(questions),
        vocab_size=len(tokenizer),
        final_loss=float(history[-1]["loss"]),
        train_seconds=round(time.perf_counter() - started, 1),
    )


class WarmupConfig(GRPOStageConfig):
    """GRPO on a small random subset of the pool before scoring (LearnAlign step 1: cold-start gradients are noisy)."""

    subset_size: int = Field(default=64, description="random pool problems the warm-up trains on")
    steps: int = Field(default=4, description="optimizer steps (4 x 16 = one epoch of the subset)")
    problems_per_step: int = Field(default=16, description="problems per step")


@dg.asset(group_name="policy", code_version="3", **gpu_step("transformers"))
def warmup_policy(
    context: dg.AssetExecutionContext,
    config: WarmupConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    store: ArtifactStore,
    raw_problems: pl.DataFrame,
    pretrained_policy: Checkpoint,
) -> dg.Output[Checkpoint]:
    """The pre-trained policy after a short GRPO run on a seeded random subset of the pool."""
    subset = raw_problems.sample(n=min(config.subset_size, raw_problems.height), seed=config.seed, shuffle=True)
    return grpo_stage(context, config, task, grpo_loss, store, pretrained_policy, subset, subset_ids=subset["problem_id"].to_list())
