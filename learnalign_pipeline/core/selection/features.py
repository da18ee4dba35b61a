"""Per-problem GRPO gradient features: the projected gradient of each problem's loss, from batched forward and
backward passes (`capture.py`), and the per-problem loop they are checked and timed against.

Problems whose rollouts all got the same reward (p in {0, 1}) have zero advantage: they get a zero row and no
backward pass (`features_for_rates`), since their gradient is at most the small KL term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl
import torch
from torch import nn

from ..policy.rollouts import learnable_problems
from ..task.prompts import PromptFormat
from ..training.grpo import GRPOLossConfig, per_problem_loss, to_rollout_batch, token_logprobs
from .capture import Scope, capture_batch, linear_layers
from .config import FeatureConfig
from .projection import Projector, per_problem_outer


class ExactGradients:
    """Identity "projection": the full flattened per-problem weight gradients (for tests and reference runs)."""

    name = "exact"

    def project_layer(self, name, x, gy, owner, num_problems):
        return per_problem_outer(x.float(), gy.float(), owner, num_problems).flatten(1)

    def finalize(self, blocks):
        return blocks


@dataclass(frozen=True)
class FeatureBatchResult:
    problem_ids: list[str]
    features: torch.Tensor  # [P, width] float32, rows in `problem_ids` order


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
) -> FeatureBatchResult:
    """Projected gradient of each problem's GRPO loss (at `model`, KL against `ref_model`), `problems_per_batch`
    problems per forward/backward. Callers skip zero-variance problems (`features_for_rates`)."""
    layers = linear_layers(model, scope, last_blocks)
    if not layers:
        raise ValueError(f"gradient scope {scope!r} selects no linear layers")
    model.eval()  # deterministic forward (no dropout); gradients still flow
    blocks = []
    for start in range(0, problems.height, problems_per_batch):
        chunk = problems[start : start + problems_per_batch]
        batch = to_rollout_batch(chunk, rollouts, tokenizer, template, loss_config)
        inputs, output_grads, owner = capture_batch(model, ref_model, batch, loss_config, layers, temperature)
        per_layer = [
            projector.project_layer(name, inputs[name], output_grads[name], owner, batch.num_problems)
            for name in layers
        ]
        blocks.append(projector.finalize(torch.cat(per_layer, dim=1)))
    width = blocks[0].shape[1] if blocks else 0
    features = torch.cat(blocks) if blocks else torch.zeros(0, width)
    return FeatureBatchResult(problems["problem_id"].to_list(), features)


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
        batch = to_rollout_batch(problems[i : i + 1], rollouts, tokenizer, template, loss_config)
        ref_logp = None
        if loss_config.beta:
            with torch.no_grad():
                ref_logp = token_logprobs(ref_model, batch)
        model.zero_grad(set_to_none=True)
        per_problem_loss(token_logprobs(model, batch), batch, loss_config, ref_logp=ref_logp).sum().backward()
        rows.append(torch.cat([layer.weight.grad.flatten() for layer in layers.values()]))
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
