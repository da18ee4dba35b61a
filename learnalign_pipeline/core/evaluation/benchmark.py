"""Benchmarks: pass@1 of a policy on a problem set, with what the number means recorded beside it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import polars as pl

from ..policy.generation import GenerationBackend, SamplingSpec
from ..policy.rollouts import sample_rollouts
from ..selection.config import BackendName
from ..settings import require, require_finite, setting
from ..task.prompts import PromptFormat
from ..task.verify import Verifier
from .charts import wilson_interval


@dataclass(frozen=True)
class BenchmarkConfig:
    """How the policies are benchmarked: greedy pass@1 always, and the mean over n samples per problem (the RLVR
    papers' avg@n), by default at the temperature GRPO samples at: what training optimizes, which greedy decoding
    can miss (a policy that follows a shortcut greedily can still gain in sampled accuracy)."""

    backend: BackendName = setting("transformers", "generation engine: transformers or vllm")
    fewshot: int = setting(
        0,
        "worked exemplars before each question: the first n pool problems with a solution (lm-eval's first_n; 5 for gsm8k)",
    )
    sampled_n: int = setting(4, "samples per problem for mean-of-n sampled pass@1 (0: greedy only)")
    sampled_temperature: float = setting(1.0, "temperature of the sampled pass@1 (1.0: as GRPO samples)")
    sampled_top_p: float = setting(1.0, "top-p of the sampled pass@1")

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.fewshot >= 0, "fewshot", "must be >= 0")
        require(self.sampled_n >= 0, "sampled_n", "must be >= 0")
        require(self.sampled_temperature > 0, "sampled_temperature", "must be > 0 (sampled pass@1 samples)")
        require(0 < self.sampled_top_p <= 1, "sampled_top_p", f"must be in (0, 1], got {self.sampled_top_p}")

    def decodings(self, max_new_tokens: int) -> list[SamplingSpec]:
        """Greedy, then the sampled decoding when `sampled_n` > 0."""
        specs = [SamplingSpec.greedy(max_new_tokens)]
        if self.sampled_n:
            specs.append(SamplingSpec(self.sampled_n, self.sampled_temperature, self.sampled_top_p, max_new_tokens))
        return specs


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
    mean-of-n estimate of sampled pass@1 (every problem gets spec.num_samples samples). Always the verifier's clean
    reward: a benchmark measures the policy, whatever noise marks the table carries."""
    rollouts = sample_rollouts(backend, problems, spec, verifier, template, base_seed=seed, clean=True)
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


def with_intervals(table: pl.DataFrame) -> pl.DataFrame:
    """`table` (rows of `BenchmarkResult`) with the Wilson 95% interval of each accuracy over its problems (`low`,
    `high`). A greedy accuracy is a binomial proportion over problems. A sampled pass@1 is the mean of per-problem
    rates in [0, 1], whose variance is at most p(1 - p) / N, so the same interval covers it (conservatively: the
    samples of one problem are not independent, and counting them as such would make the interval too narrow)."""
    bounds = [wilson_interval(a * n, n) for a, n in zip(table["accuracy"].to_list(), table["num_problems"].to_list())]
    return table.with_columns(
        low=pl.Series([lo for lo, _ in bounds], dtype=pl.Float64),
        high=pl.Series([hi for _, hi in bounds], dtype=pl.Float64),
    )
