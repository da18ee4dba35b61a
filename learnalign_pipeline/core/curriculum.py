"""GradAlign's adaptive curriculum (methods.md §4.3): rounds of score a chunk with the current policy, keep the
top M/q by alignment with the trusted validation gradient, train T GRPO steps on them, repeat.

One round's scoring is `score_chunk`; the training is `trainer.train_grpo`. The Dagster adapter materializes
each round's selection and checkpoint as its own asset, so the lineage shows the curriculum.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import polars as pl
import torch

from .generation import SamplingSpec, TransformersBackend
from .gradients import gradient_features
from .grpo import GRPOLossConfig
from .projection import Projector
from .prompts import PromptFormat
from .rollouts import Verifier, learnable_problems, sample_rollouts, success_rates
from .scoring import top_n, unit_rows
from .selection_methods import SelectionSignals, method_scores


def curriculum_chunk(problem_ids: list[str], chunk_size: int, round_index: int, seed: int) -> list[str]:
    """Round i's candidates: the pool shuffled once by `seed` (in sorted-id order, so row order does not matter),
    cut into chunks of `chunk_size`; round i takes chunk i mod #chunks."""
    order = sorted(problem_ids)
    random.Random(seed).shuffle(order)
    chunks = [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)] or [[]]
    return chunks[round_index % len(chunks)]


@dataclass(frozen=True)
class RoundSpec:
    candidate_samples: int = 8  # k_r
    validation_samples: int = 8  # k_v
    keep: int = 32  # M / q
    method: str = "gradalign"  # any validation-aware rule of selection_methods
    seed: int = 0


def _features(model, ref_model, tokenizer, problems, rollouts, rates, loss, projector, template, width=None, **feature_options) -> torch.Tensor:
    """Raw projected gradients, zero rows for zero-variance problems; rows follow `rates`. With no learnable
    problem at all the rows are zeros of `width` (the other set's width), so the two sets still line up."""
    active = learnable_problems(rates).select("problem_id").join(problems, on="problem_id", how="left", maintain_order="left")
    if not active.height:
        return torch.zeros(rates.height, width or 1)
    result = gradient_features(model, ref_model, tokenizer, active, rollouts, loss, projector, template, **feature_options)
    features = torch.zeros(rates.height, result.features.shape[1])
    row_of = {pid: i for i, pid in enumerate(rates["problem_id"].to_list())}
    if active.height:
        features[[row_of[p] for p in result.problem_ids]] = result.features
    return features


def score_chunk(
    model,
    ref_model,
    tokenizer,
    chunk: pl.DataFrame,
    validation: pl.DataFrame,
    verifier: Verifier,
    loss: GRPOLossConfig,
    projector: Projector,
    template: str | PromptFormat,
    spec: RoundSpec,
    max_new_tokens: int,
    round_index: int,
    **feature_options,
) -> pl.DataFrame:
    """Every chunk problem with its success rate and score at the current policy, plus a `selected` flag for the
    top `spec.keep` (ties by problem id). `feature_options` (scope, last_blocks, problems_per_batch) go to
    `gradient_features`, so candidates and validation problems share the pool's feature settings."""
    backend = TransformersBackend(model, tokenizer)
    base = spec.seed * 1_000_003 + round_index * 7919
    sample = lambda problems, k, offset: sample_rollouts(  # noqa: E731
        backend, problems, SamplingSpec(num_samples=k, temperature=1.0, max_new_tokens=max_new_tokens), verifier, template, base + offset
    )
    chunk_rollouts = sample(chunk, spec.candidate_samples, 0)
    val_rollouts = sample(validation, spec.validation_samples, 1)
    chunk_rates, val_rates = success_rates(chunk_rollouts), success_rates(val_rollouts)
    val_features = _features(model, ref_model, tokenizer, validation, val_rollouts, val_rates, loss, projector, template, **feature_options)
    features = _features(model, ref_model, tokenizer, chunk, chunk_rollouts, chunk_rates, loss, projector, template, val_features.shape[1], **feature_options)
    if val_features.shape[1] != features.shape[1]:  # only validation was empty: zeros of the candidates' width
        val_features = torch.zeros(val_features.shape[0], features.shape[1])
    unit, norms = unit_rows(features)
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
