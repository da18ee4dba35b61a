"""GradAlign's adaptive curriculum (methods.md §4.3): rounds of score a chunk with the current policy, keep the
top M/q by alignment with the trusted validation gradient, train T GRPO steps on them, repeat.

One round's scoring is `score_chunk`; the training is TRL (`lib/training.py` launches it). The Dagster adapter
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
from ..settings import require, require_finite, setting
from ..task.config import TaskConfig
from ..task.verify import Verifier
from ..training.grpo import GRPOLossConfig
from .config import FeatureConfig
from .features import features_for_rates
from .methods import SelectionSignals, method_scores
from .scoring import top_n, unit_rows

GradAlignScorer = Literal["ours", "released"]


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
    scorer: GradAlignScorer = setting(
        "ours",
        "ours: the pipeline's loss (what training minimizes: std-normalized advantages, KL) on rollouts at T=1; "
        "released: GradAlign's released scorer (rollouts at T=0.7, top-p 0.95; advantages r - mean, no KL, token "
        "mean, log-probabilities of the raw logits)",
    )

    def __post_init__(self) -> None:
        require_finite(self)
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


def curriculum_chunk(problem_ids: list[str], chunk_size: int, round_index: int, seed: int) -> list[str]:
    """Round i's candidates: the pool shuffled once by `seed` (in sorted-id order, so row order does not matter),
    cut into chunks of `chunk_size`; round i takes chunk i mod #chunks."""
    order = sorted(problem_ids)
    random.Random(seed).shuffle(order)
    chunks = [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)] or [[]]
    return chunks[round_index % len(chunks)]


def score_chunk(
    model,
    ref_model,
    tokenizer,
    chunk: pl.DataFrame,
    validation: pl.DataFrame,
    verifier: Verifier,
    loss: GRPOLossConfig,
    features: FeatureConfig,
    task: TaskConfig,
    spec: CurriculumConfig,
    round_index: int,
    autocast_dtype: torch.dtype | None = None,
) -> pl.DataFrame:
    """Every chunk problem with its success rate and score at the current policy, plus a `selected` flag for the
    top `spec.keep` (ties by problem id). Candidates and validation problems share the pool's feature settings and
    the scorer `spec.scorer` (`gradalign_scoring`); the released scorer has no KL term, so `ref_model` is unused.
    Generation and features run on the model's device under `autocast_dtype`."""
    backend, template = TransformersBackend(model, tokenizer, autocast_dtype=autocast_dtype), task.prompt_format()
    base = spec.seed * 1_000_003 + round_index * 7919

    loss = gradalign_scoring(spec.scorer, loss, 1, task.max_new_tokens)[1]

    def sample(problems: pl.DataFrame, k: int, offset: int) -> pl.DataFrame:
        sampling = gradalign_scoring(spec.scorer, loss, k, task.max_new_tokens)[0]
        return sample_rollouts(backend, problems, sampling, verifier, template, base + offset)

    chunk_rollouts = sample(chunk, spec.candidate_samples, 0)
    val_rollouts = sample(validation, spec.validation_samples, 1)
    chunk_rates, val_rates = success_rates(chunk_rollouts), success_rates(val_rollouts)
    val_features = features_for_rates(
        model,
        ref_model,
        tokenizer,
        validation,
        val_rollouts,
        val_rates,
        loss,
        features,
        template,
        autocast_dtype=autocast_dtype,
    )
    candidate_features = features_for_rates(
        model,
        ref_model,
        tokenizer,
        chunk,
        chunk_rollouts,
        chunk_rates,
        loss,
        features,
        template,
        empty_width=val_features.shape[1],
        autocast_dtype=autocast_dtype,
    )
    if (
        val_features.shape[1] != candidate_features.shape[1]
    ):  # only validation was empty: zeros of the candidates' width
        val_features = torch.zeros(val_features.shape[0], candidate_features.shape[1])
    unit, norms = unit_rows(candidate_features)
    ids = chunk_rates["problem_id"].to_list()
    signals = SelectionSignals(
        problem_ids=ids,
        success_rate=torch.tensor(chunk_rates["success_rate"].to_numpy()),
        unit_features=unit,
        norms=norms,
        validation_features=val_features,
    )
    scores = method_scores(spec.method, signals, spec.seed)
    picked = set(top_n(scores, ids, spec.keep))
    return chunk_rates.select("problem_id", "success_rate").with_columns(
        pl.Series("score", scores.double().numpy()),
        pl.Series("selected", [i in picked for i in range(len(ids))]),
        pl.lit(float(val_rates["success_rate"].mean())).alias("validation_accuracy"),
        pl.lit(int((val_features.norm(dim=1) > 0).sum())).alias("validation_with_gradient"),
    )
