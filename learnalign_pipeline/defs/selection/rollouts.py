"""Rollouts of the warm-up policy on the pool and each problem's success rate p (LearnAlign step 2).

Sharded: the pool is split by problem content hash into `NUM_SHARDS` shards, each an executor step that generates
only the rows the row cache lacks (a rerun after a crash or a pool edit reuses every finished row), and a collect
step assembles the tables in pool order. The result does not depend on the shard count or the executor.
"""


import time

import dagster as dg
import polars as pl
from pydantic import Field

from ...core.artifacts import Checkpoint
from ...core.generation import SamplingSpec
from ...core.rollouts import gather_rollouts, generate_missing_rollouts, learnable_problems, success_rates
from ...core.row_cache import problem_keys, shard_of
from ..constants import GPU_K8S_CONFIG, GPU_POOL, gpu_asset
from ..generation import BackendName, Generator
from ..metadata import markdown_table
from ..resources import TaskSettings
from ..sharding import NUM_SHARDS, STEP_IO_MANAGER, RowCacheResource, merge_counts, shard_key
from ..versioning import versioned

# Bump when the rows a namespace holds would change for the same settings (generation or verifier logic).
ROLLOUT_ROWS_VERSION = "1"


class RolloutConfig(dg.Config):
    """K samples per pool problem from the warm-up policy (LearnAlign: K = 8 at temperature 1.0)."""

    num_samples: int = Field(default=8, description="samples per problem (K)")
    temperature: float = Field(default=1.0, description="sampling temperature")
    top_p: float = Field(default=1.0, description="nucleus sampling threshold")
    seed: int = Field(default=0, description="base seed; a problem's seed derives from it and the problem id")
    backend: BackendName = Field(default="transformers", description="generation engine: transformers or vllm")
    problems_per_file: int = Field(default=64, description="problems per published row-cache file: the unit a crash can lose")


def _namespace(config: RolloutConfig, task: TaskSettings, generator: Generator, row_cache: RowCacheResource, policy: Checkpoint):
    settings = {
        "version": ROLLOUT_ROWS_VERSION,
        "policy": policy.path.name,  # the checkpoint's content digest
        "backend": config.backend,
        "vllm_dtype": generator.vllm_dtype if config.backend == "vllm" else None,
        "num_samples": config.num_samples,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "seed": config.seed,
        "max_new_tokens": task.max_new_tokens,
        "template": task.template,
        "chat": task.chat,
        "verifier": task.verifier,
        "verifier_timeout_s": task.verifier_timeout_s,
    }
    cache = row_cache.cache()
    return cache, cache.namespace("rollouts", settings)


def _shard_rows(problems: pl.DataFrame, shard: int, num_shards: int) -> pl.DataFrame:
    mask = [shard_of(k, num_shards) == shard for k in problem_keys(problems)]
    return problems.filter(pl.Series(mask, dtype=pl.Boolean))


@dg.op(out={shard_key(i): dg.Out(io_manager_key=STEP_IO_MANAGER) for i in range(NUM_SHARDS)})
def plan_rollout_shards(config: RolloutConfig, raw_problems: pl.DataFrame):
    """One output per shard: its index and problem count."""
    shards = [shard_of(k, NUM_SHARDS) for k in problem_keys(raw_problems)]
    return tuple({"shard": i, "problems": shards.count(i)} for i in range(NUM_SHARDS))


@dg.op(out=dg.Out(io_manager_key=STEP_IO_MANAGER), pool=GPU_POOL, tags={"dagster-k8s/config": GPU_K8S_CONFIG})
def rollout_shard(
    config: RolloutConfig,
    task: TaskSettings,
    generator: Generator,
    row_cache: RowCacheResource,
    raw_problems: pl.DataFrame,
    warmup_policy: Checkpoint,
    shard: dict,
) -> dict:
    """Generate and verify the rollouts of one shard's problems that the row cache lacks."""
    problems = _shard_rows(raw_problems, shard["shard"], NUM_SHARDS)
    cache, ns = _namespace(config, task, generator, row_cache, warmup_policy)
    spec = SamplingSpec(num_samples=config.num_samples, temperature=config.temperature, top_p=config.top_p, max_new_tokens=task.max_new_tokens)
    verifier = task.make_verifier()
    started = time.perf_counter()
    stats = generate_missing_rollouts(
        cache, ns, problems, lambda: generator.backend(config.backend, warmup_policy), spec, verifier, task.prompt_format(),
        config.seed, config.problems_per_file,
    )
    return {
        "shard": shard["shard"], "stats": stats, "seconds": time.perf_counter() - started,
        "verifier_stats": getattr(verifier, "stats", {}),  # math-verify timeouts and parse failures
    }


def _rate_histogram(rates: pl.DataFrame) -> str:
    hist = rates.group_by("num_correct").len().sort("num_correct").rename({"len": "problems"})
    return markdown_table(hist.with_columns((pl.col("problems") / rates.height).alias("share")))


@dg.op(out={"rollouts": dg.Out(), "success_rates": dg.Out()})
def collect_rollouts(
    config: RolloutConfig,
    task: TaskSettings,
    generator: Generator,
    row_cache: RowCacheResource,
    raw_problems: pl.DataFrame,
    warmup_policy: Checkpoint,
    manifests: list,
):
    """The rollouts of every pool problem from the row cache, in pool order, and the success rates."""
    cache, ns = _namespace(config, task, generator, row_cache, warmup_policy)
    rollouts = gather_rollouts(cache, ns, raw_problems)
    stats = merge_counts(manifests, "stats")
    seconds = sum(m["seconds"] for m in manifests)
    rates = success_rates(rollouts)
    learnable = learnable_problems(rates).height
    yield versioned(
        rollouts,
        output_name="rollouts",
        generated_tokens=int(rollouts["num_tokens"].sum()),
        generated_problems=int(stats.get("generated_problems", 0)),  # this run; the rest came from the row cache
        reused_problems=int(stats.get("reused_problems", 0)),
        published_files=int(stats.get("files", 0)),
        tokens_per_second=round(stats["generated_tokens"] / seconds, 1) if stats.get("generated_tokens") and seconds > 0 else None,
        truncated_share=float((rollouts["finish_reason"] == "length").mean()),
        backend=config.backend,
        num_shards=len(manifests),
        row_cache=dg.MetadataValue.path(str(ns.path)),
        verifier_stats=dg.MetadataValue.json(merge_counts(manifests, "verifier_stats")),
    )
    yield versioned(
        rates,
        output_name="success_rates",
        mean_success_rate=float(rates["success_rate"].mean()),
        learnable_share=learnable / rates.height,
        success_histogram=dg.MetadataValue.md(_rate_histogram(rates)),
    )


def _op_config(values: dict) -> dict:
    """The stage's one config (run config `ops: {<asset>: {config: ...}}`), handed to each of its steps."""
    values = RolloutConfig(**values).model_dump()
    steps = ["plan_rollout_shards", "collect_rollouts", *(f"rollout_{shard_key(i)}" for i in range(NUM_SHARDS))]
    return {op: {"config": values} for op in steps}


@dg.graph_multi_asset(
    group_name="selection",
    outs={
        "rollouts": dg.AssetOut(
            code_version="2", description="One row per (problem, sample): completion, token ids, reward.", **gpu_asset("transformers")
        ),
        "success_rates": dg.AssetOut(
            code_version="2", description="Per problem: samples, successes and success rate p.", **gpu_asset("transformers")
        ),
    },
    config=dg.ConfigMapping(config_fn=_op_config, config_schema=RolloutConfig.to_config_schema()),
)
def rollouts_and_success_rates(raw_problems, warmup_policy):
    shards = plan_rollout_shards(raw_problems)
    manifests = [rollout_shard.alias(f"rollout_{shard_key(i)}")(raw_problems, warmup_policy, shards[i]) for i in range(NUM_SHARDS)]
    rollouts, rates = collect_rollouts(raw_problems, warmup_policy, manifests)
    return {"rollouts": rollouts, "success_rates": rates}
