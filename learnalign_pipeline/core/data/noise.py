"""Pools with unreliable rewards (GradAlign's regime 1): a seeded share of problems gets a wrong gold answer or
coin-flip rewards.

A wrong-gold problem keeps its question; its `answer` is replaced, its id is recomputed from the new (prompt,
answer) pair like any other problem. A coin-flip problem keeps its question, gold and id; every rollout's reward
is a fair coin keyed by (problem, rollout seed) (`task/verify.py` RolloutRewards, built from the table by
`rollout_rewards` for every consumer: scoring rollouts, GRPO training, the curriculum; benchmarks build it clean).
Either way its `extra` JSON records `"noisy": true`, the kind and the clean answer, so every later table can report
how many noisy problems it holds. Which problems are noisy is drawn with its own hash purpose, independent of
Random's draw even for equal seeds.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Literal

import polars as pl

from ..storage.hashing import problem_id, seeded_uniform
from ..task.verify import RolloutRewards, Verifier

NoiseKind = Literal["wrong", "random", "coin_flip"]


def _wrong_answer(answer: str, draw: float) -> str | None:
    """gold + a nonzero offset in [-9, 9] \\ {0} for numeric golds; None when the gold is not a number."""
    try:
        value = Decimal(answer.replace(",", ""))
    except InvalidOperation:
        return None
    offset = 1 + int(draw * 9)  # 1..9
    return str(value + (offset if draw * 1e6 % 2 < 1 else -offset))


def mark_noisy(problems: pl.DataFrame, share: float, kind: NoiseKind = "wrong", seed: int = 0) -> pl.DataFrame:
    """`problems` with round(share * n) of them (the smallest seeded hashes of their ids) given a wrong gold.

    kind="wrong": gold + a nonzero offset (non-numeric golds fall back to "random"); kind="random": the gold of
    another noisy problem (a cyclic shift among them), so the answer is plausible but unrelated to the question;
    kind="coin_flip": gold and id unchanged, the rewards of every rollout are coin flips.
    """
    if not 0 <= share <= 1:
        raise ValueError("noisy share must be in [0, 1]")
    count = round(share * problems.height)
    if count == 0:
        return problems
    ids = problems["problem_id"].to_list()
    draws = seeded_uniform(ids, seed, purpose="noise")
    noisy_rows = sorted(range(len(ids)), key=lambda i: (draws[i], ids[i]))[:count]
    answers = problems["answer"].to_list()
    shifted = {row: answers[noisy_rows[(k + 1) % count]] for k, row in enumerate(noisy_rows)}
    new_ids, new_answers, extras = list(ids), list(answers), problems["extra"].to_list()
    prompts = problems["prompt"].to_list()
    for row in noisy_rows:
        if kind == "coin_flip":
            extra = json.loads(extras[row] or "{}")
            extras[row] = json.dumps(
                {**extra, "noisy": True, "noise_kind": kind, "clean_answer": answers[row]}, sort_keys=True
            )
            continue
        replacement = _wrong_answer(answers[row], draws[row]) if kind == "wrong" else None
        if replacement is None or replacement == answers[row]:
            replacement = shifted[row] if shifted[row] != answers[row] else f"{answers[row]}1"
        extra = json.loads(extras[row] or "{}")
        extras[row] = json.dumps(
            {**extra, "noisy": True, "noise_kind": kind, "clean_answer": answers[row]}, sort_keys=True
        )
        new_answers[row] = replacement
        new_ids[row] = problem_id(prompts[row], replacement)
    return problems.with_columns(
        pl.Series("problem_id", new_ids), pl.Series("answer", new_answers), pl.Series("extra", extras)
    )


def noisy_flags(problems: pl.DataFrame) -> pl.Series:
    """Boolean per row: was this problem's reward corrupted by `mark_noisy` (wrong gold or coin flips)."""
    return problems["extra"].str.json_path_match("$.noisy").fill_null("false").eq("true").alias("noisy")


def coin_flip_ids(problems: pl.DataFrame) -> frozenset[str]:
    """The ids of the problems whose rewards are coin flips (none when the table has no `extra` column)."""
    if "extra" not in problems.columns or problems.height == 0:
        return frozenset()
    kinds = problems["extra"].str.json_path_match("$.noise_kind")
    return frozenset(problems.filter(kinds.eq("coin_flip").fill_null(False))["problem_id"].to_list())


def rollout_rewards(problems: pl.DataFrame, verifier: Verifier, *, clean: bool = False) -> RolloutRewards:
    """The reward rule of `problems`' table: coin flips for the problems it marks as coin-flip, `verifier` for the
    rest. `clean=True` ignores the marks (benchmarks measure the policy, never the noise)."""
    return RolloutRewards(verifier, frozenset() if clean else coin_flip_ids(problems))
