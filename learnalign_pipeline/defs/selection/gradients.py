"""Projected per-problem GRPO gradients of the warm-up policy (LearnAlign step 3)."""


import json
import time
from typing import Literal

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ...core.artifacts import Checkpoint, TensorBundle
from ...core.gradients import drop_nonfinite, gradient_features
from ...core.policy import load_policy
from ...core.rollouts import learnable_problems
from ...core.projection import DenseProjector, KroneckerProjector
from ...core.scoring import unit_rows
from ..constants import gpu_step
from ..resources import GRPOLoss, TaskSettings
from ..versioning import versioned


class GradientConfig(dg.Config):
    """How per-problem gradients are projected. Both projections are seeded per layer and never materialize
    the full projection matrix."""

    projection: Literal["kronecker", "dense"] = Field(
        default="kronecker", description="kronecker: LoGra factored projection; dense: Rademacher JL (LESS/TRAK)"
    )
    kronecker_in: int = Field(default=16, description="kronecker: projected width of each layer's input")
    kronecker_out: int = Field(default=16, description="kronecker: projected width of each layer's output gradient")
    output_width: int | None = Field(default=None, description="kronecker: optional second projection to this width")
    dense_width_per_layer: int = Field(default=256, description="dense: projected width per layer")
    scope: Literal["all_linear", "last_blocks", "attention"] = Field(default="all_linear", description="which linear layers count")
    last_blocks: int = Field(default=1, description="with scope=last_blocks: how many final blocks")
    seed: int = Field(default=0, description="projection seed")
    problems_per_batch: int = Field(default=32, description="problems per batched forward/backward")
    on_nonfinite: Literal["fail", "exclude"] = Field(
        default="fail", description="NaN/inf features: fail naming the problems, or zero them (scored like p in {0,1}) and count them"
    )

    def projector(self):
        if self.projection == "dense":
            return DenseProjector(self.dense_width_per_layer, self.seed)
        return KroneckerProjector(self.kronecker_in, self.kronecker_out, self.seed, self.output_width)


@dg.asset(group_name="selection", code_version="1", **gpu_step())
def projected_gradients(
    config: GradientConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    raw_problems: pl.DataFrame,
    rollouts: pl.DataFrame,
    success_rates: pl.DataFrame,
    warmup_policy: Checkpoint,
    pretrained_policy: Checkpoint,
) -> dg.Output[TensorBundle]:
    """Unit-norm projected gradient of each problem's GRPO loss (float16) and its norm; rows follow
    `success_rates`. Problems with p in {0, 1} have zero advantage: no backward pass, a zero row."""
    model, tokenizer = load_policy(warmup_policy.path)
    loss = grpo_loss.config(task.max_new_tokens)
    reference = load_policy(pretrained_policy.path)[0] if loss.beta else None
    active = learnable_problems(success_rates).select("problem_id")
    active = active.join(raw_problems, on="problem_id", how="left", maintain_order="left")
    started = time.perf_counter()
    result = gradient_features(
        model, reference, tokenizer, active, rollouts, loss, config.projector(), task.prompt_format(),
        scope=config.scope, last_blocks=config.last_blocks, problems_per_batch=config.problems_per_batch,
    )
    seconds = time.perf_counter() - started
    result, excluded = drop_nonfinite(result, config.on_nonfinite)
    ids = success_rates["problem_id"].to_list()
    row_of = {pid: i for i, pid in enumerate(ids)}
    features = torch.zeros(len(ids), result.features.shape[1])
    if active.height:
        features[[row_of[pid] for pid in result.problem_ids]] = result.features
    unit, norms = unit_rows(features)
    bundle = TensorBundle(
        tensors={"unit_features": unit.to(torch.float16), "norms": norms, "has_gradient": (norms > 0).to(torch.uint8)},
        metadata={
            "problem_ids": json.dumps(ids),
            "projection": config.projection,
            "width": str(int(features.shape[1])),
            "seed": str(config.seed),
            "scope": config.scope if config.scope != "last_blocks" else f"last_blocks:{config.last_blocks}",
            "config": config.model_dump_json(),
            "policy": warmup_policy.path.name,
            "reference_policy": pretrained_policy.path.name,
        },
    )
    return versioned(
        bundle,
        width=int(features.shape[1]),
        problems=len(ids),
        backward_problems=active.height,
        skipped_zero_variance=len(ids) - active.height,
        excluded_nonfinite=len(excluded),
        excluded_nonfinite_ids=dg.MetadataValue.json(excluded[:100]),
        problems_per_second=round(active.height / seconds, 1) if seconds > 0 else None,
        projection=config.projection,
        policy=warmup_policy.path.name,
    )
