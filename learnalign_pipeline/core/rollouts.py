"""Rollouts: K samples per problem from a generation backend, each rewarded by a verifier."""

from __future__ import annotations

from typing import Protocol

import polars as pl

from .generation import GenerationBackend, SamplingSpec, prompt_seeds
from .prompts import PromptFormat, render

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


class Verifier(Protocol):
    name: str

    def score_batch(self, completions: list[str], golds: list[str]) -> list[float]: ...


def sample_rollouts(
    backend: GenerationBackend,
    problems: pl.DataFrame,
    spec: SamplingSpec,
    verifier: Verifier,
    template: str | PromptFormat,
    base_seed: int,
) -> pl.DataFrame:
    """One row per (problem, sample) with the completion, its token ids and its reward."""
    ids = problems["problem_id"].to_list()
    tokenizer = getattr(backend, "tokenizer", None)  # only a chat format needs it
    prompts = [render(template, p, tokenizer) for p in problems["prompt"].to_list()]
    seeds = prompt_seeds(ids, base_seed, spec.num_samples)
    groups = backend.generate(prompts, spec, seeds)
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
    golds = problems["answer"].to_list()
    rows["reward"] = verifier.score_batch(rows["completion"], [golds[i // spec.num_samples] for i in range(len(rows["completion"]))])
    return pl.DataFrame(rows, schema=ROLLOUT_SCHEMA)


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


def to_rollout_batch(
    problems: pl.DataFrame, rollouts: pl.DataFrame, tokenizer, template: str, scale_rewards: bool, advantage_eps: float
):
    """The GRPO tensors for `problems` (in their order) from their rows in `rollouts`.

    Both the trainer and the gradient-feature stage build their batches here, so they see identical
    token ids, masks and advantages for the same rollouts.
    """
    import torch

    from .grpo import build_rollout_batch, group_advantages

    by_problem = rollouts.group_by("problem_id", maintain_order=True).agg(
        pl.col("token_ids").sort_by("sample_index"), pl.col("reward").sort_by("sample_index")
    )
    order = problems.select("problem_id", "prompt").join(by_problem, on="problem_id", how="left", maintain_order="left")
    if order["token_ids"].null_count():
        missing = order.filter(pl.col("token_ids").is_null())["problem_id"].head(3).to_list()
        raise ValueError(f"rollouts are missing for {order['token_ids'].null_count()} problems, e.g. {missing}")
    prompt_ids = [tokenizer(render(template, p, tokenizer))["input_ids"] for p in order["prompt"].to_list()]
    rewards = torch.tensor(order["reward"].to_list(), dtype=torch.float32)
    advantages = group_advantages(rewards, scale=scale_rewards, eps=advantage_eps)
    return build_rollout_batch(prompt_ids, order["token_ids"].to_list(), advantages, tokenizer.pad_token_id)


def generate_missing_rollouts(
    cache,
    ns,
    problems: pl.DataFrame,
    make_backend,
    spec: SamplingSpec,
    verifier: Verifier,
    template: str | PromptFormat,
    base_seed: int,
    problems_per_file: int,
) -> dict:
    """Generate rollouts for the problems of `problems` that `cache` lacks, publishing one batch file per
    `problems_per_file` problems as it finishes (a killed run keeps every finished file). `make_backend` is called
    only if something is missing. Returns counts for metadata."""
    from .row_cache import problem_keys

    keys = problem_keys(problems)
    cached = cache.rows(ns, keys)
    have = set(cached["row_key"].to_list()) if cached is not None else set()
    missing = problems.with_columns(pl.Series("row_key", keys)).filter(~pl.col("row_key").is_in(list(have)))
    stats = {"problems": problems.height, "reused_problems": problems.height - missing.height, "generated_problems": 0, "files": 0, "generated_tokens": 0}
    if missing.height:
        backend = make_backend()
        for start in range(0, missing.height, problems_per_file):
            chunk = missing[start : start + problems_per_file]
            rows = sample_rollouts(backend, chunk, spec, verifier, template, base_seed)
            rows = rows.with_columns(pl.col("problem_id").replace_strict(chunk["problem_id"], chunk["row_key"]).alias("row_key"))
            cache.put_rows(ns, rows)
            stats["generated_problems"] += chunk.height
            stats["files"] += 1
            stats["generated_tokens"] += int(rows["num_tokens"].sum())
    return stats


def gather_rollouts(cache, ns, problems: pl.DataFrame) -> pl.DataFrame:
    """Every problem's cached rollouts in `problems` order and sample order, as `sample_rollouts` returns them."""
    from .row_cache import problem_keys

    keys = problem_keys(problems)
    cached = cache.rows(ns, keys)
    order = pl.DataFrame({"row_key": keys, "_position": range(len(keys)), "_id": problems["problem_id"]})
    rows = order.join(cached if cached is not None else pl.DataFrame(schema={**ROLLOUT_SCHEMA, "row_key": pl.String()}), on="row_key", how="left")
    lacking = rows.filter(pl.col("sample_index").is_null())
    if lacking.height:
        raise ValueError(f"rollouts are missing from the row cache for {lacking.height} problems, e.g. {lacking['_id'].head(3).to_list()}")
    return rows.sort("_position", "sample_index").select(list(ROLLOUT_SCHEMA)).cast(ROLLOUT_SCHEMA)
