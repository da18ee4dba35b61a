"""Projected per-problem GRPO gradients of the warm-up policy (LearnAlign step 3).

Sharded (`lib/sharded.py`): learnable problems are grouped into content-defined batches (membership depends only
on the problems and their rollouts), batches are spread over the shard steps by their hash, each step computes
the batches the row cache lacks, and a collect step assembles the bundle (`core/selection/stages.py`
FeatureStage). The features are therefore bitwise the same for any shard count, executor, or number of reruns,
and a pool edit recomputes only the batches it touches.
"""

import json
import time

import dagster as dg
import torch

from ...core.policy.model import load_policy
from ...core.selection.config import FeatureConfig
from ...core.selection.features import drop_nonfinite, scatter_rows
from ...core.selection.scoring import carries_gradient, unit_rows
from ...core.selection.stages import FeatureBatch, FeatureStage
from ...core.storage.artifacts import TensorBundle
from ...lib.config import config_view, settings
from ...lib.outputs import versioned
from ...lib.sharded import NUM_SHARDS, Step, dropped_files, merge_counts, sharded_asset
from ...lib.tags import gpu_asset
from ...lib.training import reference_checkpoint, reference_model


class GradientConfig(config_view(FeatureConfig)):
    """How per-problem gradients are projected (core/selection/config.py FeatureConfig)."""


def _reference(step: Step):
    """The features' KL reference: the one `grpo_loss.reference` setting training uses, for a stage starting at
    the warm-up policy."""
    return reference_checkpoint(
        step.resources.grpo_loss, step.inputs["warmup_policy"], step.inputs["pretrained_policy"]
    )


def _stage(step: Step) -> FeatureStage:
    r = step.resources
    task = r.task.config()
    loss = r.grpo_loss.loss_config(task.max_new_tokens)
    policy, reference = step.inputs["warmup_policy"], _reference(step)
    return FeatureStage(
        r.row_cache.cache(warn=step.context.log.warning),
        settings(step.config, FeatureConfig),
        task,
        loss,
        policy.path.name,
        reference.path.name,
        r.compute.config(),
    )


def _plan(step: Step) -> list[dict]:
    """One entry per shard, listing its batches."""
    i = step.inputs
    batches = _stage(step).plan(i["raw_problems"], i["rollouts"], i["success_rates"], NUM_SHARDS)
    return [{"shard": s, "batches": [b.as_json() for b in batches if b.shard == s]} for s in range(NUM_SHARDS)]


def _shard(step: Step, work: dict) -> dict:
    """Compute the projected gradients of one shard's batches that the row cache lacks."""
    stage, i = _stage(step), step.inputs

    device = stage.compute.for_shard(work["shard"]).torch_device()  # shard i on GPU i of a multi-GPU node

    def load_models():
        model, tokenizer = load_policy(i["warmup_policy"].path, device=device)
        return model, reference_model(stage.loss, _reference(step), i["warmup_policy"], model), tokenizer

    started = time.perf_counter()
    batches = [FeatureBatch.from_json(b) for b in work["batches"]]
    stats = stage.compute_missing(batches, i["raw_problems"], i["rollouts"], load_models)
    return {
        "shard": work["shard"],
        "stats": stats,
        "seconds": time.perf_counter() - started,
        "dropped_files": stage.cache.dropped,  # row-cache files that failed verification; their batches recomputed
    }


def pool_feature_config(projected_gradients: TensorBundle) -> FeatureConfig:
    """The settings the pool's features were computed with (projection kind, widths, seed, scope, norm floor)."""
    return FeatureConfig(**json.loads(projected_gradients.metadata["config"]))


def _collect(step: Step, manifests: list[dict]):
    """Unit-norm projected gradient of each problem's GRPO loss (float16) and its norm; rows follow
    `success_rates`. Problems with p in {0, 1} have zero advantage: no backward pass, a zero row."""
    stage, i, config = _stage(step), step.inputs, settings(step.config, FeatureConfig)
    rates = i["success_rates"]
    active = stage.active(i["raw_problems"], rates)
    batches = stage.plan(i["raw_problems"], i["rollouts"], rates, NUM_SHARDS)
    result, excluded = drop_nonfinite(stage.gather(batches, active["problem_id"].to_list()), config.on_nonfinite)
    stats = merge_counts(manifests, "stats")
    seconds = sum(m["seconds"] for m in manifests)
    ids = rates["problem_id"].to_list()
    unit, norms = unit_rows(scatter_rows(ids, result), config.norm_floor)
    width = int(unit.shape[1])
    bundle = TensorBundle(
        tensors={
            "unit_features": unit.to(torch.float16),
            "norms": norms,
            "has_gradient": carries_gradient(norms, config.norm_floor).to(torch.uint8),
        },
        metadata={
            "problem_ids": json.dumps(ids),
            "projection": config.projection,
            "width": str(width),
            "seed": str(config.seed),
            "scope": config.scope_name,
            "config": step.config.model_dump_json(),
            "policy": i["warmup_policy"].path.name,
            "reference_policy": _reference(step).path.name,
        },
    )
    computed = int(stats.get("computed_problems", 0))
    yield versioned(
        bundle,
        output_name="projected_gradients",
        summary=f"{active.height} of {len(ids)} problems differentiated (width {width}), {computed} computed, "
        f"{int(stats.get('reused_batches', 0))} batches reused",
        width=width,
        problems=len(ids),
        backward_problems=active.height,
        computed_problems=computed,  # this run; the other batches came from the row cache
        computed_batches=int(stats.get("computed_batches", 0)),
        reused_batches=int(stats.get("reused_batches", 0)),
        batches=len(batches),
        num_shards=len(manifests),
        row_cache=dg.MetadataValue.path(str(stage.namespace.path)),
        skipped_zero_variance=len(ids) - active.height,
        excluded_nonfinite=len(excluded),
        excluded_nonfinite_ids=dg.MetadataValue.json(excluded[:100]),
        problems_per_second=round(computed / seconds, 1) if computed and seconds > 0 else None,
        row_cache_files_dropped=dg.MetadataValue.json(dropped_files(manifests, stage.cache)),
        projection=config.projection,
        policy=i["warmup_policy"].path.name,
    )


projected_gradients = sharded_asset(
    name="projected_gradients",
    stage="gradient",
    inputs=("raw_problems", "rollouts", "success_rates", "warmup_policy", "pretrained_policy"),
    config=GradientConfig,
    resources={"task", "grpo_loss", "compute", "row_cache"},
    outs={
        "projected_gradients": dg.AssetOut(
            code_version="4",
            description="Unit-norm projected gradient of each problem's GRPO loss (float16) and its norm; rows follow "
            "`success_rates`. Problems with p in {0, 1} have zero advantage: no backward pass, a zero row.",
            **gpu_asset(),
        )
    },
    plan=_plan,
    shard=_shard,
    collect=_collect,
    group_name="selection",
)
