"""Rollouts of the warm-up policy on the pool and each problem's success rate p (LearnAlign step 2).

Sharded (`lib/sharded.py`): the pool is split by problem content hash, each shard step generates only the rows
the row cache lacks (a rerun after a crash or a pool edit reuses every finished row), and a collect step
assembles the tables in pool order (`core/selection/stages.py` RolloutStage).
"""

import time

import dagster as dg
import polars as pl

from ...core.evaluation.charts import histogram
from ...core.policy.rollouts import learnable_problems, success_rates
from ...core.selection.config import RolloutConfig
from ...core.selection.stages import RolloutStage, shard_rows
from ...lib.charts import image, present, table
from ...lib.config import config_view, settings
from ...lib.outputs import versioned
from ...lib.sharded import NUM_SHARDS, Step, dropped_files, merge_counts, sharded_asset
from ...lib.tags import gpu_asset


class RolloutRunConfig(config_view(RolloutConfig)):
    """K samples per pool problem from the warm-up policy (core/selection/config.py RolloutConfig)."""


def _stage(step: Step) -> RolloutStage:
    r = step.resources
    settings_ = settings(step.config, RolloutConfig)
    policy = step.inputs["warmup_policy"]
    return RolloutStage(
        r.row_cache.cache(warn=step.context.log.warning),
        settings_,
        r.task.config(),
        policy.path.name,
        r.generator.engine_settings(settings_.backend),
    )


def _plan(step: Step) -> list[dict]:
    return _stage(step).plan(step.inputs["raw_problems"], NUM_SHARDS)


def _shard(step: Step, work: dict) -> dict:
    """Generate and verify the rollouts of one shard's problems that the row cache lacks."""
    stage, generator, task = _stage(step), step.resources.generator, step.resources.task
    problems = shard_rows(step.inputs["raw_problems"], work["shard"], NUM_SHARDS)
    verifier = task.make_verifier()
    started = time.perf_counter()
    compute = step.resources.compute.config().for_shard(work["shard"], generator.tensor_parallel_size)
    stats = stage.generate_missing(
        problems, lambda: generator.backend(stage.settings.backend, step.inputs["warmup_policy"], compute), verifier
    )
    return {
        "shard": work["shard"],
        "stats": stats,
        "seconds": time.perf_counter() - started,
        "verifier_stats": getattr(verifier, "stats", {}),  # math-verify timeouts and parse failures
        "dropped_files": stage.cache.dropped,  # row-cache files that failed verification; their rows regenerated
    }


def _rate_histogram(rates: pl.DataFrame) -> pl.DataFrame:
    hist = rates.group_by("num_correct").len().sort("num_correct").rename({"len": "problems"})
    return hist.with_columns((pl.col("problems") / rates.height).alias("share"))


def _p_chart(rates: pl.DataFrame) -> bytes | None:
    if not rates.height:
        return None
    k = int(rates["num_samples"].max())
    edges = [(i - 0.5) / k for i in range(k + 2)]  # one bar per possible p = i/K
    return histogram(rates["success_rate"].to_list(), f"success rate p over K={k} samples", "p", bins=edges)


def _collect(step: Step, manifests: list[dict]):
    """The rollouts of every pool problem from the row cache, in pool order, and the success rates."""
    step.resources.generator.close_engine()  # the shard steps (in one process) shared it; later steps need the GPU
    stage = _stage(step)
    rollouts = stage.gather(step.inputs["raw_problems"])
    stats = merge_counts(manifests, "stats")
    seconds = sum(m["seconds"] for m in manifests)
    rates = success_rates(rollouts)
    learnable = learnable_problems(rates).height
    yield versioned(
        rollouts,
        output_name="rollouts",
        summary=f"{rollouts.height} completions, {int(stats.get('generated_problems', 0))} problems generated, "
        f"{int(stats.get('reused_problems', 0))} reused from the row cache",
        generated_tokens=int(rollouts["num_tokens"].sum()),
        generated_problems=int(stats.get("generated_problems", 0)),  # this run; the rest came from the row cache
        reused_problems=int(stats.get("reused_problems", 0)),
        published_files=int(stats.get("files", 0)),
        tokens_per_second=round(stats["generated_tokens"] / seconds, 1)
        if stats.get("generated_tokens") and seconds > 0
        else None,
        truncated_share=float((rollouts["finish_reason"] == "length").mean()),
        backend=stage.settings.backend,
        num_shards=len(manifests),
        row_cache=dg.MetadataValue.path(str(stage.namespace.path)),
        verifier_stats=dg.MetadataValue.json(merge_counts(manifests, "verifier_stats")),
        row_cache_files_dropped=dg.MetadataValue.json(dropped_files(manifests, stage.cache)),
    )
    yield versioned(
        rates,
        output_name="success_rates",
        summary=f"mean p {rates['success_rate'].mean():.2f}, learnable (0 < p < 1) {learnable / rates.height:.0%} of {rates.height}",
        mean_success_rate=float(rates["success_rate"].mean()),
        learnable_share=learnable / rates.height,
        success_histogram=table(
            _rate_histogram(rates),
            descriptions={"problems": "problems with this many correct", "share": "share of the pool"},
        ),
        **present(p_histogram=image(_p_chart(rates), "success rate histogram")),
    )


rollouts_and_success_rates = sharded_asset(
    name="rollouts_and_success_rates",
    stage="rollout",
    inputs=("raw_problems", "warmup_policy"),
    config=RolloutRunConfig,
    resources={"task", "generator", "compute", "row_cache"},
    outs={
        "rollouts": dg.AssetOut(
            code_version="3",
            description="One row per (problem, sample): completion, token ids, reward.",
            **gpu_asset("transformers"),
        ),
        "success_rates": dg.AssetOut(
            code_version="3",
            description="Per problem: samples, successes and success rate p.",
            **gpu_asset("transformers"),
        ),
    },
    plan=_plan,
    shard=_shard,
    collect=_collect,
    group_name="selection",
)
