"""Benchmarks: greedy pass@1 of a policy on a problem set, with what the number means recorded beside it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import polars as pl

from .generation import GenerationBackend, SamplingSpec
from .rollouts import Verifier, sample_rollouts


@dataclass(frozen=True)
class BenchmarkResult:
    policy: str
    benchmark: str
    num_problems: int
    num_correct: int
    accuracy: float
    template: str
    decoding: str
    max_new_tokens: int
    verifier: str
    backend: str

    def as_row(self) -> dict:
        return asdict(self)


def greedy_pass_at_1(
    backend: GenerationBackend,
    problems: pl.DataFrame,
    verifier: Verifier,
    template: str,
    max_new_tokens: int,
    policy: str,
    benchmark: str,
) -> tuple[BenchmarkResult, pl.DataFrame]:
    """(summary, per-problem completions and rewards) of greedy decoding on `problems`."""
    rollouts = sample_rollouts(
        backend, problems, SamplingSpec(num_samples=1, temperature=0.0, max_new_tokens=max_new_tokens), verifier, template, base_seed=0
    )
    correct = int(rollouts["reward"].sum())
    result = BenchmarkResult(
        policy=policy,
        benchmark=benchmark,
        num_problems=problems.height,
        num_correct=correct,
        accuracy=correct / problems.height if problems.height else float("nan"),
        template=template,
        decoding="greedy",
        max_new_tokens=max_new_tokens,
        verifier=verifier.name,
        backend=backend.name,
    )
    return result, rollouts.with_columns(pl.lit(policy).alias("policy"))
