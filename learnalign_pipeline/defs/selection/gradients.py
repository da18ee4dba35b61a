"""Projected per-problem GRPO gradients of the warm-up policy (LearnAlign step 3).

Sharded: learnable problems are grouped into content-defined batches (membership depends only on the problems and
their rollouts), batches are spread over `NUM_SHARDS` executor steps by their hash, each step computes the batches
the row cache lacks, and a collect step assembles the bundle. The features are therefore bitwise the same for any
shard count, executor, or number of reruns, and a pool edit recomputes only the batches it touches.
"""


import dataclasses
import json
import time
from typing import Literal

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ...core.artifacts import Checkpoint, TensorBundle
from ...core.gradients import (
    FeatureBatch, compute_missing_feature_batches, drop_nonfinite, gather_features, gradient_features, plan_feature_batches,
)
from ...core.policy import load_policy
from ...core.rollouts import learnable_problems
from ...core.projection import DenseProjector, KroneckerProjector
from ...core.scoring import unit_rows
from ..constants import GPU_K8S_CONFIG, GPU_POOL, gpu_asset
from ..resources import GRPOLoss, TaskSettings
from ..sharding import NUM_SHARDS, STEP_IO_MANAGER, RowCacheResource, merge_counts, shard_key
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
    problems_per_batch: int = Field(
        default=4, description="expected problems per batched forward/backward (content-defined batches; at most 8x this)"
    )
    on_nonfinite: Literal["fail", "exclude"] = Field(
        default="fail", description="NaN/inf features: fail naming the problems, or zero them (scored like p in {0,1}) and count them"
    )

    def projector(self):
        if self.projection == "dense":
            return DenseProjector(self.dense_width_per_layer, self.seed)
        return KroneckerProjector(self.kronecker_in, self.kronecker_out, self.seed, self.output_width)


# Bump when the features a namespace holds would change for the same settings (gradient or projection math).
FEATURE_ROWS_VERSION = "1"


def _namespace(config: GradientConfig, task: TaskSettings, grpo_loss: GRPOLoss, row_cache: RowCacheResource, policy, reference):
    loss = grpo_loss.config(task.max_new_tokens)
    settings = {
        "version": FEATURE_ROWS_VERSION,
        "policy": policy.path.name,  # checkpoint content digests
        "reference_policy": reference.path.name if loss.beta else None,
        "loss": dataclasses.asdict(loss),
        "projection": config.model_dump(exclude={"problems_per_batch", "on_nonfinite"}),
        "template": task.template,
        "chat": task.chat,
    }
    cache = row_cache.cache()
    return cache, cache.namespace("gradient_features", settings)


def _plan(config, task, grpo_loss, row_cache, raw_problems, rollouts, success_rates, policy, reference):
    cache, ns = _namespace(config, task, grpo_loss, row_cache, policy, reference)
    active = learnable_problems(success_rates).select("problem_id")
    active = active.join(raw_problems, on="problem_id", how="left", maintain_order="left")
    return cache, ns, active, plan_feature_batches(active, rollouts, ns.key, config.problems_per_batch, NUM_SHARDS)


@dg.op(out={shard_key(i): dg.Out(io_manager_key=STEP_IO_MANAGER) for i in range(NUM_SHARDS)})
def plan_gradient_shards(
    config: GradientConfig, task: TaskSettings, grpo_loss: GRPOLoss, row_cache: RowCacheResource, raw_problems: pl.DataFrame,
    rollouts: pl.DataFrame, success_rates: pl.DataFrame, warmup_policy: Checkpoint, pretrained_policy: Checkpoint,
):
    """One output per shard, listing its batches."""
    *_, batches = _plan(config, task, grpo_loss, row_cache, raw_problems, rollouts, success_rates, warmup_policy, pretrained_policy)
    return tuple(
        {"shard": i, "batches": [{"key": b.key, "problem_ids": list(b.problem_ids), "shard": b.shard} for b in batches if b.shard == i]}
        for i in range(NUM_SHARDS)
    )


@dg.op(out=dg.Out(io_manager_key=STEP_IO_MANAGER), pool=GPU_POOL, tags={"dagster-k8s/config": GPU_K8S_CONFIG})
def gradient_shard(
    config: GradientConfig, task: TaskSettings, grpo_loss: GRPOLoss, row_cache: RowCacheResource, raw_problems: pl.DataFrame,
    rollouts: pl.DataFrame, warmup_policy: Checkpoint, pretrained_policy: Checkpoint, shard: dict,
) -> dict:
    """Compute the projected gradients of one shard's batches that the row cache lacks."""
    cache, ns = _namespace(config, task, grpo_loss, row_cache, warmup_policy, pretrained_policy)
    loss = grpo_loss.config(task.max_new_tokens)
    projector = config.projector()
    batches = [FeatureBatch(b["key"], tuple(b["problem_ids"]), b["shard"]) for b in shard["batches"]]

    def load_models():
        model, tokenizer = load_policy(warmup_policy.path)
        reference = load_policy(pretrained_policy.path)[0] if loss.beta else None
        return model, reference, tokenizer

    def features(models, problems):
        model, reference, tokenizer = models
        return gradient_features(
            model, reference, tokenizer, problems, rollouts, loss, projector, task.prompt_format(),
            scope=config.scope, last_blocks=config.last_blocks, problems_per_batch=problems.height,
        )

    started = time.perf_counter()
    stats = compute_missing_feature_batches(cache, ns, batches, raw_problems, rollouts, load_models, features)
    return {"shard": shard["shard"], "stats": stats, "seconds": time.perf_counter() - started}


@dg.op(out=dg.Out())
def collect_gradients(
    config: GradientConfig, task: TaskSettings, grpo_loss: GRPOLoss, row_cache: RowCacheResource, raw_problems: pl.DataFrame,
    rollouts: pl.DataFrame, success_rates: pl.DataFrame, warmup_policy: Checkpoint, pretrained_policy: Checkpoint, manifests: list,
):
    """Unit-norm projected gradient of each problem's GRPO loss (float16) and its norm; rows follow
    `success_rates`. Problems with p in {0, 1} have zero advantage: no backward pass, a zero row."""
    cache, ns, active, batches = _plan(config, task, grpo_loss, row_cache, raw_problems, rollouts, success_rates, warmup_policy, pretrained_policy)
    result = gather_features(cache, ns, batches, active["problem_id"].to_list())
    result, excluded = drop_nonfinite(result, config.on_nonfinite)
    stats = merge_counts(manifests, "stats")
    seconds = sum(m["seconds"] for m in manifests)
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
    computed = int(stats.get("computed_problems", 0))
    return versioned(
        bundle,
        width=int(features.shape[1]),
        problems=len(ids),
        backward_problems=active.height,
        computed_problems=computed,  # this run; the other batches came from the row cache
        computed_batches=int(stats.get("computed_batches", 0)),
        reused_batches=int(stats.get("reused_batches", 0)),
        batches=len(batches),
        num_shards=len(manifests),
        row_cache=dg.MetadataValue.path(str(ns.path)),
        skipped_zero_variance=len(ids) - active.height,
        excluded_nonfinite=len(excluded),
        excluded_nonfinite_ids=dg.MetadataValue.json(excluded[:100]),
        problems_per_second=round(computed / seconds, 1) if computed and seconds > 0 else None,
        projection=config.projection,
        policy=warmup_policy.path.name,
    )


def _op_config(values: dict) -> dict:
    """The stage's one config (run config `ops: {<asset>: {config: ...}}`), handed to each of its steps."""
    values = GradientConfig(**values).model_dump()
    steps = ["plan_gradient_shards", "collect_gradients", *(f"gradient_{shard_key(i)}" for i in range(NUM_SHARDS))]
    return {op: {"config": values} for op in steps}


@dg.graph_asset(group_name="selection", code_version="2", config=dg.ConfigMapping(config_fn=_op_config, config_schema=GradientConfig.to_config_schema()), **gpu_asset())
def projected_gradients(raw_problems, rollouts, success_rates, warmup_policy, pretrained_policy):
    """Unit-norm projected gradient of each problem's GRPO loss (float16) and its norm; rows follow
    `success_rates`. Problems with p in {0, 1} have zero advantage: no backward pass, a zero row."""
    shards = plan_gradient_shards(raw_problems, rollouts, success_rates, warmup_policy, pretrained_policy)
    manifests = [
        gradient_shard.alias(f"gradient_{shard_key(i)}")(raw_problems, rollouts, warmup_policy, pretrained_policy, shards[i])
        for i in range(NUM_SHARDS)
    ]
    return collect_gradients(raw_problems, rollouts, success_rates, warmup_policy, pretrained_policy, manifests)
