"""GradAlign's adaptive curriculum (methods.md §4.3): rounds of score a chunk with the current policy, keep the
top M/q by alignment with the trusted validation gradient, train T GRPO steps on them, repeat.

One round's scoring is `score_round`; the training is TRL (`lib/training.py` launches it). The Dagster adapter
materializes each round's selection and checkpoint as its own asset, so the lineage shows the curriculum.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Literal

import polars as pl
import torch

from ..policy.generation import SamplingSpec, TransformersBackend
from ..policy.rollouts import sample_rollouts, success_rates
from ..settings import require, setting
from ..task.config import TaskConfig
from ..task.verify import Verifier
from ..training.grpo import GRPOLossConfig
from .config import FeatureConfig
from .features import features_for_rates
from .methods import SelectionSignals, method_scores
from .scoring import carries_gradient, top_n, unit_rows

GradAlignScorer = Literal["ours", "released"]
ShortfallRule = Literal["draw_more", "keep_fewer"]


@dataclass(frozen=True)
class CurriculumConfig:
    """One GradAlign selection round (methods.md notation: M, q, k_r, k_v)."""

    chunk_size: int = setting(256, "M: candidates scored this round")
    keep: int = setting(32, "M/q: candidates kept for this round's training")
    candidate_samples: int = setting(8, "k_r: rollouts per candidate")
    validation_samples: int = setting(8, "k_v: rollouts per validation problem")
    method: str = setting(
        "gradalign", "a validation-aware rule: gradalign, gradalign_dot, gradalign_unit_mean, gradalign_learnability"
    )
    seed: int = setting(42, "seed of the pool shuffle (GradAlign: 42) and of the rollouts")
    shortfall: ShortfallRule = setting(
        "draw_more",
        "when fewer candidates than `keep` carry a gradient: draw_more scores the next chunks until `keep` do (or the "
        "pool is spent), keep_fewer keeps those that do; never filled with zero-gradient candidates",
    )
    scorer: GradAlignScorer = setting(
        "ours",
        "ours: the pipeline's loss (what training minimizes: std-normalized advantages, KL) on rollouts at T=1; "
        "released: GradAlign's released scorer (rollouts at T=0.7, top-p 0.95; advantages r - mean, no KL, token "
        "mean, log-probabilities of the raw logits)",
    )

    def __post_init__(self) -> None:
        for name in ("chunk_size", "keep"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        for name in ("candidate_samples", "validation_samples"):
            require(getattr(self, name) >= 2, name, "needs >= 2 rollouts per problem: one gives no gradient")


def gradalign_scoring(
    scorer: GradAlignScorer, loss: GRPOLossConfig, num_samples: int, max_new_tokens: int
) -> tuple[SamplingSpec, GRPOLossConfig]:
    """How GradAlign samples and differentiates candidates and validation problems.

    `ours` is the pipeline's GRPO loss on rollouts at T=1 (the direction training moves). `released` follows the
    released scorer (StigLidu/GradAlign select/parallel: `norm_adv_by_std=False`, policy loss only, token mean over
    the responses, `model(...).logits` without temperature scaling; vLLM sampling at T=0.7, top-p 0.95). Gradients
    of the raw log-probabilities are what `gradient_features` computes at its default temperature of 1.
    """
    if scorer == "released":
        sampling = SamplingSpec(num_samples=num_samples, temperature=0.7, top_p=0.95, max_new_tokens=max_new_tokens)
        return sampling, replace(loss, beta=0.0, scale_rewards=False, aggregation="token_mean")
    return SamplingSpec(num_samples=num_samples, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens), loss


def curriculum_chunks(problem_ids: list[str], chunk_size: int, seed: int) -> list[list[str]]:
    """The pool shuffled once by `seed` (in sorted-id order, so row order does not matter), cut into chunks of
    `chunk_size`; round i scores chunk i mod #chunks first."""
    order = sorted(problem_ids)
    random.Random(seed).shuffle(order)
    return [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)] or [[]]


def curriculum_chunk(problem_ids: list[str], chunk_size: int, round_index: int, seed: int) -> list[str]:
    """Round i's first candidates: chunk i mod #chunks of `curriculum_chunks`."""
    chunks = curriculum_chunks(problem_ids, chunk_size, seed)
    return chunks[round_index % len(chunks)]


@dataclass
class _Scorer:
    """What one round's scoring shares: the policy, its sampler and loss, and the round's seed base."""

    model: object
    ref_model: object
    tokenizer: object
    verifier: Verifier
    loss: GRPOLossConfig
    features: FeatureConfig
    task: TaskConfig
    spec: CurriculumConfig
    round_index: int
    autocast_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        self.backend = TransformersBackend(self.model, self.tokenizer, autocast_dtype=self.autocast_dtype)
        self.template = self.task.prompt_format()
        self.base = self.spec.seed * 1_000_003 + self.round_index * 7919
        self.loss = gradalign_scoring(self.spec.scorer, self.loss, 1, self.task.max_new_tokens)[1]

    def gradients(self, problems: pl.DataFrame, k: int, offset: int, width: int = 0):
        """(success rates, raw projected gradients) of `problems` from k rollouts each (rollout seeds: base +
        offset); the reward is the table's rule, coin flips included (`sample_rollouts`)."""
        sampling = gradalign_scoring(self.spec.scorer, self.loss, k, self.task.max_new_tokens)[0]
        rollouts = sample_rollouts(self.backend, problems, sampling, self.verifier, self.template, self.base + offset)
        rates = success_rates(rollouts)
        features = features_for_rates(
            self.model,
            self.ref_model,
            self.tokenizer,
            problems,
            rollouts,
            rates,
            self.loss,
            self.features,
            self.template,
            empty_width=width,
            autocast_dtype=self.autocast_dtype,
        )
        return rates, features


def score_round(
    model,
    ref_model,
    tokenizer,
    pool: pl.DataFrame,
    validation: pl.DataFrame,
    verifier: Verifier,
    loss: GRPOLossConfig,
    features: FeatureConfig,
    task: TaskConfig,
    spec: CurriculumConfig,
    round_index: int,
    autocast_dtype: torch.dtype | None = None,
) -> pl.DataFrame:
    """One round's selection at the current policy: every candidate scored this round with its chunk, success rate,
    score, `has_gradient` (norm above `features.norm_floor`) and a `selected` flag, plus the round's report in
    constant columns (`chunks_scored`, `with_gradient`, `kept`, `shortfall`, validation accuracy and gradients).

    Round i scores chunk i mod #chunks. Only candidates that carry a gradient are ever kept (the others score about
    0 and would fill the quota by problem id): when the chunk has fewer than `spec.keep` of them, `shortfall`
    "draw_more" scores the next chunks (same policy, fresh rollouts) until it has `keep` or every chunk is scored,
    "keep_fewer" keeps what it has. The report's `shortfall` says what happened: none, drew_more, kept_fewer, or
    drew_more_kept_fewer (the pool ran out). The released scorer has no KL term, so `ref_model` is then unused.
    Generation and features run on the model's device under `autocast_dtype`."""
    scorer = _Scorer(model, ref_model, tokenizer, verifier, loss, features, task, spec, round_index, autocast_dtype)
    val_rates, val_features = scorer.gradients(validation, spec.validation_samples, 1)
    chunks = curriculum_chunks(pool["problem_id"].to_list(), spec.chunk_size, spec.seed)
    order = [(round_index + j) % len(chunks) for j in range(len(chunks))]
    scored, with_gradient = [], 0
    for draw, chunk_index in enumerate(order):
        if draw and (spec.shortfall == "keep_fewer" or with_gradient >= spec.keep):
            break
        chunk = pool.filter(pl.col("problem_id").is_in(chunks[chunk_index])).sort("problem_id")
        # the first chunk's rollouts keep their seeds (offset 0); a further chunk gets its own (2, 3, ...)
        rates, cand = scorer.gradients(
            chunk, spec.candidate_samples, 0 if draw == 0 else draw + 1, val_features.shape[1]
        )
        if val_features.shape[1] != cand.shape[1]:  # only validation was empty: zeros of the candidates' width
            val_features = torch.zeros(val_features.shape[0], cand.shape[1])
        unit, norms = unit_rows(cand, features.norm_floor)
        ids = rates["problem_id"].to_list()
        signals = SelectionSignals(
            problem_ids=ids,
            success_rate=torch.tensor(rates["success_rate"].to_numpy()),
            unit_features=unit,
            norms=norms,
            validation_features=val_features,
            norm_floor=features.norm_floor,
        )
        has_gradient = carries_gradient(norms, features.norm_floor)
        with_gradient += int(has_gradient.sum())
        scored.append(
            rates.select("problem_id", "success_rate").with_columns(
                pl.lit(chunk_index).alias("chunk"),
                pl.Series("score", method_scores(spec.method, signals, spec.seed).double().numpy()),
                pl.Series("has_gradient", has_gradient.tolist(), dtype=pl.Boolean),
            )
        )
    table = pl.concat(scored)
    eligible = table.filter(pl.col("has_gradient"))
    picked = {eligible["problem_id"][i] for i in top_n(eligible["score"], eligible["problem_id"].to_list(), spec.keep)}
    kept = len(picked)
    drew = len(scored) > 1
    shortfall = {(False, True): "none", (True, True): "drew_more", (False, False): "kept_fewer"}.get(
        (drew, kept >= spec.keep), "drew_more_kept_fewer"
    )
    return table.with_columns(
        pl.col("problem_id").is_in(list(picked)).alias("selected"),
        pl.lit(len(scored)).alias("chunks_scored"),
        pl.lit(with_gradient).alias("with_gradient"),
        pl.lit(kept).alias("kept"),
        pl.lit(shortfall).alias("shortfall"),
        pl.lit(float(val_rates["success_rate"].mean())).alias("validation_accuracy"),
        pl.lit(int(carries_gradient(val_features.norm(dim=1), features.norm_floor).sum())).alias(
            "validation_with_gradient"
        ),
    )
