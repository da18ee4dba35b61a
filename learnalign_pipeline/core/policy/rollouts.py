"""Rollouts: K samples per problem from a generation backend, each rewarded by a verifier."""

from __future__ import annotations

import polars as pl

from ..data.noise import rollout_rewards
from ..task.prompts import PromptFormat
from ..task.verify import Verifier
from .generation import GenerationBackend, SamplingSpec, prompt_seeds, with_stop_strings

ROLLOUT_SCHEMA = {
    "problem_id": pl.String(),
    "sample_index": pl.Int32(),
    "seed": pl.Int64(),
    "completion": pl.String(),
    "token_ids": pl.List(pl.Int32()),
    "num_tokens": pl.Int32(),
    "finish_reason": pl.String(),
    "reward": pl.Float32(),
}


def sample_rollouts(
    backend: GenerationBackend,
    problems: pl.DataFrame,
    spec: SamplingSpec,
    verifier: Verifier,
    template: str | PromptFormat,
    base_seed: int,
    *,
    clean: bool = False,
) -> pl.DataFrame:
    """One row per (problem, sample) with the completion, its token ids and its reward, decided by the table's
    reward rule (`data/noise.py` rollout_rewards: a fair coin per rollout for problems marked coin-flip, unless
    `clean`, as benchmarks ask). GRPO training scores its own rollouts through the same rule
    (`training/trl_engine.py` VerifierReward)."""
    ids = problems["problem_id"].to_list()
    fmt = template if isinstance(template, PromptFormat) else PromptFormat(template)
    tokenizer = getattr(backend, "tokenizer", None)  # only a chat format needs it
    prompts = [fmt.render(p, tokenizer) for p in problems["prompt"].to_list()]
    seeds = prompt_seeds(ids, base_seed, spec.num_samples)
    groups = backend.generate(prompts, with_stop_strings(spec, fmt.stop), seeds)
    rows: dict[str, list] = {k: [] for k in ROLLOUT_SCHEMA}
    for pid, seed, group in zip(ids, seeds, groups, strict=True):
        for j, c in enumerate(group):
            rows["problem_id"].append(pid)
            rows["sample_index"].append(j)
            rows["seed"].append(seed + j)
            rows["completion"].append(c.text)
            rows["token_ids"].append(list(c.token_ids))
            rows["num_tokens"].append(len(c.token_ids))
            rows["finish_reason"].append(c.finish_reason)
    frame = pl.DataFrame({**rows, "reward": [0.0] * len(rows["completion"])}, schema=ROLLOUT_SCHEMA)
    return reward_rollouts(frame, problems, verifier, clean=clean)


def reward_rollouts(
    rollouts: pl.DataFrame, problems: pl.DataFrame, verifier: Verifier, *, clean: bool = False
) -> pl.DataFrame:
    """`rollouts` with every reward computed from `problems`' table: the verifier against each gold, or a coin per
    rollout for problems the table marks as coin-flip (data/noise.py). Re-rewarding the same samples under another
    table (a pool where some problems got coin-flip rewards) needs no new generation."""
    golds = dict(zip(problems["problem_id"].to_list(), problems["answer"].to_list()))
    ids = rollouts["problem_id"].to_list()
    rewards = rollout_rewards(problems, verifier, clean=clean)(
        ids, rollouts["seed"].to_list(), rollouts["completion"].to_list(), [golds[i] for i in ids]
    )
    return rollouts.with_columns(pl.Series("reward", rewards, dtype=pl.Float32))


def success_rates(rollouts: pl.DataFrame) -> pl.DataFrame:
    """Per problem: samples, successes and success rate p, in first-appearance order of the problems."""
    return rollouts.group_by("problem_id", maintain_order=True).agg(
        pl.len().cast(pl.Int32).alias("num_samples"),
        pl.col("reward").sum().cast(pl.Int32).alias("num_correct"),
        pl.col("reward").mean().alias("success_rate"),
        pl.col("num_tokens").mean().alias("mean_completion_tokens"),
    )


def learnable_problems(rates: pl.DataFrame) -> pl.DataFrame:
    """Rows of `rates` with 0 < p < 1. The others have equal rewards in every sample, hence zero advantage: no
    policy-gradient signal and no backward pass needed."""
    return rates.filter((pl.col("success_rate") > 0) & (pl.col("success_rate") < 1))
