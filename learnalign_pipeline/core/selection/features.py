"""Per-problem GRPO gradient features: the projected gradient of each problem's loss, from batched forward and
backward passes (`capture.py`), and the per-problem loop they are checked and timed against.

A batch of problems is split into sub-batches of whole problems whose estimated memory (`memory.py`) stays under
the budget, so the stage is bounded by tokens, not by how many problems a content-defined batch happens to hold.
Problems whose rollouts all got the same reward (p in {0, 1}) have zero advantage: they get a zero row and no
backward pass (`features_for_rates`), since their gradient is at most the small KL term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import polars as pl
import torch
from torch import nn

from ..policy.rollouts import learnable_problems
from ..task.prompts import PromptFormat
from ..training.grpo import GRPOLossConfig, RolloutBatch, per_problem_loss, to_rollout_batch, token_logprobs
from .capture import Scope, capture_features, linear_layers
from .config import FeatureConfig
from .memory import FeatureMemory, feature_memory, plan_sub_batches
from .projection import ExactGradients, Projector

__all__ = [
    "ExactGradients",
    "FeatureBatchResult",
    "PlannedPeak",
    "gradient_features",
    "features_for_rates",
    "loop_gradients",
    "planned_features",
    "planned_peak",
]

CPU_BUDGET_BYTES = 4 << 30  # a fixed default on CPU keeps sub-batches (and so the features' rounding) reproducible


@dataclass(frozen=True)
class FeatureBatchResult:
    problem_ids: list[str]
    features: torch.Tensor  # [P, width] float32 on the CPU, rows in `problem_ids` order


def memory_budget(model, budget_gib: float | None) -> int:
    """Bytes the activations of one sub-batch may take: `budget_gib`, or by default 80% of what is free on the
    model's CUDA device once the models are loaded, and 4 GiB on the CPU."""
    if budget_gib is not None:
        return int(budget_gib * (1 << 30))
    device = model.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    return CPU_BUDGET_BYTES


def gradient_features(
    model: nn.Module,
    ref_model: nn.Module | None,
    tokenizer,
    problems: pl.DataFrame,
    rollouts: pl.DataFrame,
    loss_config: GRPOLossConfig,
    projector: Projector,
    template: str | PromptFormat,
    scope: Scope = "all_linear",
    last_blocks: int = 1,
    problems_per_batch: int = 32,
    temperature: float = 1.0,
    checkpointing: bool = False,
    memory_budget_bytes: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> FeatureBatchResult:
    """Projected gradient of each problem's GRPO loss (at `model`, KL against `ref_model`). Problems are taken
    `problems_per_batch` at a time and each group is split further into sub-batches whose estimated memory stays
    under `memory_budget_bytes` (default `memory_budget(model, None)`). Callers skip zero-variance problems
    (`features_for_rates`)."""
    layers = linear_layers(model, scope, last_blocks)
    if not layers:
        raise ValueError(f"gradient scope {scope!r} selects no linear layers")
    model.eval()  # deterministic forward (no dropout); gradients still flow
    budget = memory_budget_bytes or memory_budget(model, None)
    estimator = feature_memory(model, layers, projector, autocast_dtype, checkpointing)
    blocks = []
    for start in range(0, problems.height, problems_per_batch):
        chunk = problems[start : start + problems_per_batch]
        whole = to_rollout_batch(chunk, rollouts, tokenizer, template, loss_config)
        blocks += planned_features(
            model,
            ref_model,
            whole,
            lambda group, chunk=chunk: to_rollout_batch(chunk[group], rollouts, tokenizer, template, loss_config),
            loss_config,
            layers,
            projector,
            estimator,
            budget,
            temperature=temperature,
            checkpointing=checkpointing,
            autocast_dtype=autocast_dtype,
        )
    width = blocks[0].shape[1] if blocks else 0
    features = torch.cat(blocks) if blocks else torch.zeros(0, width)
    return FeatureBatchResult(problems["problem_id"].to_list(), features)


def planned_features(
    model,
    ref_model,
    whole,
    batch_of: Callable[[list[int]], RolloutBatch],
    loss_config: GRPOLossConfig,
    layers: dict[str, nn.Linear],
    projector: Projector,
    estimator: FeatureMemory,
    budget: int,
    *,
    temperature: float = 1.0,
    checkpointing: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """The stage's inner loop, without polars (the GPU check runs it as is): split the rollout batch `whole` into
    the sub-batches `plan_sub_batches` picks under `budget` and capture each one's features ([problems, width]
    float32 on the CPU, in order). `batch_of(indices)` builds the batch of those problems alone (padded to them)."""
    groups, head_chunk = plan_sub_batches(problem_lengths(whole), samples_per_problem(whole), estimator, budget)
    blocks = []
    for group in groups:
        batch = whole if len(groups) == 1 else batch_of(group)
        features = capture_features(
            model,
            ref_model,
            batch,
            loss_config,
            layers,
            projector,
            temperature,
            checkpointing,
            head_chunk,
            autocast_dtype,
        )
        blocks.append(features.float().cpu())
    return blocks


@dataclass(frozen=True)
class PlannedPeak:
    """The estimator's figure for one `planned_features` call."""

    bytes: int  # the weight copies plus the largest sub-batch the planner picks
    tokens: int  # padded tokens of that sub-batch (prompts once, completions K times): a per-token figure's divisor
    sub_batches: int


def planned_peak(whole, estimator: FeatureMemory, budget: int) -> PlannedPeak:
    """What the estimator says `planned_features` on `whole` under `budget` holds at its peak."""
    lengths, samples = problem_lengths(whole), samples_per_problem(whole)
    groups, head_chunk = plan_sub_batches(lengths, samples, estimator, budget)
    peaks = []
    for group in groups:
        prompt, completion = max(lengths[p][0] for p in group), max(lengths[p][1] for p in group)
        batch = estimator.batch_bytes(len(group), samples, prompt, completion, head_chunk)
        peaks.append((batch, len(group) * (prompt + samples * completion)))
    batch, tokens = max(peaks)
    return PlannedPeak(estimator.fixed_bytes() + batch, tokens, len(groups))


def samples_per_problem(batch) -> int:
    """K: the most rollout rows any problem of the batch has."""
    return int(torch.bincount(batch.problem_index).max())


def problem_lengths(batch) -> list[tuple[int, int]]:
    """Per problem: (prompt tokens, longest completion) in a rollout batch."""
    lengths = batch.attention_mask.sum(dim=1)
    prompt = batch.completion_mask.argmax(dim=1) + 1
    out = []
    for p in range(batch.num_problems):
        rows = batch.problem_index == p
        out.append((int(prompt[rows].max()), int((lengths[rows] - prompt[rows]).max())))
    return out


def scatter_rows(problem_ids: list[str], result: FeatureBatchResult, empty_width: int = 0) -> torch.Tensor:
    """[len(problem_ids), width]: each result row at its problem's position, zeros elsewhere (width
    `empty_width` when the result is empty)."""
    width = result.features.shape[1] if result.problem_ids else empty_width
    rows = torch.zeros(len(problem_ids), width)
    if result.problem_ids:
        row_of = {pid: i for i, pid in enumerate(problem_ids)}
        rows[[row_of[pid] for pid in result.problem_ids]] = result.features
    return rows


def features_for_rates(
    model: nn.Module,
    ref_model: nn.Module | None,
    tokenizer,
    problems: pl.DataFrame,
    rollouts: pl.DataFrame,
    rates: pl.DataFrame,
    loss_config: GRPOLossConfig,
    settings: FeatureConfig,
    template: str | PromptFormat,
    empty_width: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Raw projected gradients with rows following `rates`: computed for problems with 0 < p < 1, zero rows
    (no backward pass) for the rest."""
    active = (
        learnable_problems(rates)
        .select("problem_id")
        .join(problems, on="problem_id", how="left", maintain_order="left")
    )
    result = FeatureBatchResult([], torch.zeros(0, empty_width))
    if active.height:
        result = gradient_features(
            model,
            ref_model,
            tokenizer,
            active,
            rollouts,
            loss_config,
            settings.projector(),
            template,
            scope=settings.scope,
            last_blocks=settings.last_blocks,
            problems_per_batch=settings.problems_per_batch,
            checkpointing=settings.activation_checkpointing,
            memory_budget_bytes=memory_budget(model, settings.memory_budget_gib),
            autocast_dtype=autocast_dtype,
        )
    return scatter_rows(rates["problem_id"].to_list(), result, empty_width)


def loop_gradients(
    model,
    ref_model,
    tokenizer,
    problems,
    rollouts,
    loss_config: GRPOLossConfig,
    template="qa",
    scope: Scope = "all_linear",
) -> torch.Tensor:
    """The reference `gradient_features` is checked and timed against (the LESS way): one forward/backward per
    problem, reading each scored layer's weight .grad. [P, sum of layer sizes], rows in `problems` order."""
    layers = linear_layers(model, scope)
    rows = []
    for i in range(problems.height):
        batch = to_rollout_batch(problems[i : i + 1], rollouts, tokenizer, template, loss_config).to(model.device)
        ref_logp = None
        if loss_config.beta:
            with torch.no_grad():
                ref_logp = token_logprobs(ref_model, batch)
        model.zero_grad(set_to_none=True)
        per_problem_loss(token_logprobs(model, batch), batch, loss_config, ref_logp=ref_logp).sum().backward()
        rows.append(torch.cat([layer.weight.grad.flatten() for layer in layers.values()]).cpu())
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


class NonFiniteError(FloatingPointError):
    """NaN or inf where a number was required; the message names the problems."""


def drop_nonfinite(
    result: FeatureBatchResult, policy: Literal["fail", "exclude"]
) -> tuple[FeatureBatchResult, list[str]]:
    """Check every problem's features. `fail` raises naming the problems; `exclude` zeroes their rows (they then
    score like zero-variance problems) and returns their ids so the stage can count and list them."""
    bad_rows = (~torch.isfinite(result.features).all(dim=1)).nonzero().flatten().tolist()
    bad_ids = [result.problem_ids[i] for i in bad_rows]
    if bad_ids and policy == "fail":
        raise NonFiniteError(f"non-finite gradient features for {len(bad_ids)} problems, e.g. {bad_ids[:5]}")
    features = result.features.clone()
    features[bad_rows] = 0.0
    return FeatureBatchResult(result.problem_ids, features), bad_ids
