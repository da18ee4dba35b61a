"""Benchmarks: pass@1 of a policy on a problem set, with what the number means recorded beside it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import polars as pl

from .generation import GenerationBackend, SamplingSpec
from .prompts import PromptFormat
from .rollouts import Verifier, sample_rollouts


@dataclass(frozen=True)
class BenchmarkResult:
    policy: str
    benchmark: str
    num_problems: int
    num_correct: int  # greedy: problems solved; sampled: correct samples
    accuracy: float  # pass@1: greedy accuracy, or the mean over n samples per problem
    template: str
    decoding: str  # "greedy" or "sampled n=<n> T=<t> top_p=<p>"
    max_new_tokens: int
    verifier: str
    backend: str

    def as_row(self) -> dict:
        return asdict(self)


def pass_at_1(
    backend: GenerationBackend,
    problems: pl.DataFrame,
    verifier: Verifier,
    template: str | PromptFormat,
    spec: SamplingSpec,
    policy: str,
    benchmark: str,
    seed: int = 0,
) -> tuple[BenchmarkResult, pl.DataFrame]:
    """(summary, per-sample completions and rewards). Greedy when spec.temperature == 0; otherwise the unbiased
    mean-of-n estimate of sampled pass@1 (every problem gets spec.num_samples samples)."""
    rollouts = sample_rollouts(backend, problems, spec, verifier, template, base_seed=seed)
    correct = int(rollouts["reward"].sum())
    greedy = spec.temperature == 0
    result = BenchmarkResult(
        policy=policy,
        benchmark=benchmark,
        num_problems=problems.height,
        num_correct=correct,
        accuracy=correct / rollouts.height if rollouts.height else float("nan"),
        template=template.name if isinstance(template, PromptFormat) else template,
        decoding="greedy" if greedy else f"sampled n={spec.num_samples} T={spec.temperature} top_p={spec.top_p}",
        max_new_tokens=spec.max_new_tokens,
        verifier=verifier.name,
        backend=backend.name,
    )
    return result, rollouts.with_columns(pl.lit(policy).alias("policy"))

