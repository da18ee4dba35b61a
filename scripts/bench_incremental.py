"""Benchmark of row-level reuse: what adding 5% new problems to the pool costs, against a full run.

With a finished demo run's warm-up and pre-trained checkpoints and its pool (`--artifacts`):

1. full run on the pool, cold row cache: rollouts (K samples per problem, verified), gradient features of the
   learnable problems, LearnAlign scores, top-N subset;
2. the pool plus `--added` (default 5%) new problems, on the warm cache of run 1: only missing rows are computed;
3. the same grown pool on a cold cache (full recomputation).

It reports the re-cost of run 2 relative to run 3 (wall time, problems generated, problems differentiated) and
whether run 2's subset and features equal run 3's. The stages call the functions the assets call
(`generate_missing_rollouts`, `plan_feature_batches`, `compute_missing_feature_batches`, ...) with the assets'
default configs; shards run one after another in this process (sharding changes nothing in the results).

    python scripts/bench_incremental.py --artifacts .learnalign/artifacts
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from learnalign_pipeline.core.arithmetic import arithmetic_frame
from learnalign_pipeline.core.gradients import compute_missing_feature_batches, gather_features, gradient_features, plan_feature_batches
from learnalign_pipeline.core.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.policy import load_policy
from learnalign_pipeline.core.rollouts import gather_rollouts, generate_missing_rollouts, learnable_problems, success_rates
from learnalign_pipeline.core.row_cache import RowCache
from learnalign_pipeline.core.scoring import learnability, learnalign_scores, top_n, unit_rows
from learnalign_pipeline.defs.resources import GRPOLoss, TaskSettings
from learnalign_pipeline.defs.selection.gradients import GradientConfig
from learnalign_pipeline.defs.sharding import NUM_SHARDS
from learnalign_pipeline.defs.selection.rollouts import RolloutConfig
from learnalign_pipeline.defs.selection.scores import AlignmentConfig, SelectionConfig


def newest(directory: Path, asset: str) -> Path:
    return sorted((directory / asset).iterdir(), key=lambda p: p.stat().st_mtime)[-1]


def run(cache: RowCache, pool: pl.DataFrame, warmup: Path, pretrained: Path) -> dict:
    """Rollouts -> success rates -> gradient features -> scores -> subset, computing only what `cache` lacks."""
    task, rollout_config, gradient_config = TaskSettings(), RolloutConfig(), GradientConfig()
    loss = GRPOLoss().config(task.max_new_tokens)
    started = time.perf_counter()
    ns = cache.namespace("rollouts", {"policy": warmup.name, **rollout_config.model_dump(), "max_new_tokens": task.max_new_tokens})
    spec = SamplingSpec(rollout_config.num_samples, rollout_config.temperature, rollout_config.top_p, task.max_new_tokens)
    generated = generate_missing_rollouts(
        cache, ns, pool, lambda: TransformersBackend(*load_policy(warmup)), spec, task.make_verifier(), task.prompt_format(),
        rollout_config.seed, rollout_config.problems_per_file,
    )
    rollouts = gather_rollouts(cache, ns, pool)
    rates = success_rates(rollouts)
    rollout_seconds = time.perf_counter() - started

    started = time.perf_counter()
    active = learnable_problems(rates).select("problem_id").join(pool, on="problem_id", how="left", maintain_order="left")
    ns = cache.namespace("gradient_features", {"policy": warmup.name, "reference": pretrained.name, "loss": dataclasses.asdict(loss), **gradient_config.model_dump()})
    batches = plan_feature_batches(active, rollouts, ns.key, gradient_config.problems_per_batch, NUM_SHARDS)
    projector = gradient_config.projector()

    def load_models():
        model, tokenizer = load_policy(warmup)
        return model, load_policy(pretrained)[0], tokenizer

    def features(models, members):
        model, reference, tokenizer = models
        return gradient_features(model, reference, tokenizer, members, rollouts, loss, projector, task.prompt_format(), problems_per_batch=members.height)

    differentiated = compute_missing_feature_batches(cache, ns, batches, pool, rollouts, load_models, features)
    result = gather_features(cache, ns, batches, active["problem_id"].to_list())
    gradient_seconds = time.perf_counter() - started

    ids = rates["problem_id"].to_list()
    row_of = {pid: i for i, pid in enumerate(ids)}
    full = torch.zeros(len(ids), result.features.shape[1])
    full[[row_of[p] for p in result.problem_ids]] = result.features
    unit = unit_rows(full)[0].to(torch.float16).float()  # the asset stores float16 unit features
    weights = learnability(torch.tensor(rates["success_rate"].to_numpy(), dtype=torch.float64)).float()
    scores = learnalign_scores(weights, unit, include_self=AlignmentConfig().include_self)[0]
    subset = [ids[i] for i in top_n(scores.double(), ids, SelectionConfig().budget)]
    return {
        "seconds": rollout_seconds + gradient_seconds, "rollout_seconds": rollout_seconds, "gradient_seconds": gradient_seconds,
        "generated": generated["generated_problems"], "differentiated": differentiated["computed_problems"],
        "learnable": active.height, "subset": subset, "features": full, "pool": pool.height,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, required=True, help="LEARNALIGN_HOME/artifacts of a finished demo run")
    parser.add_argument("--added", type=float, default=0.05, help="new problems as a share of the pool")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pool = pl.read_parquet(newest(args.artifacts, "raw_problems"))
    benchmark = pl.read_parquet(newest(args.artifacts, "benchmark_problems"))
    taken = frozenset(pool["problem_id"].to_list() + benchmark["problem_id"].to_list())
    wanted = round(args.added * pool.height)
    added = arithmetic_frame(4 * wanted, seed=1234, split="pool", exclude_ids=taken).head(wanted)
    grown = pl.concat([pool, added.select(pool.columns)], how="vertical_relaxed")  # an older run may lack newer columns
    warmup, pretrained = newest(args.artifacts, "warmup_policy"), newest(args.artifacts, "pretrained_policy")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; pool {pool.height}, added {added.height}")
    with tempfile.TemporaryDirectory() as warm_dir, tempfile.TemporaryDirectory() as cold_dir:
        first = run(RowCache(warm_dir), pool, warmup, pretrained)
        incremental = run(RowCache(warm_dir), grown, warmup, pretrained)
        full = run(RowCache(cold_dir), grown, warmup, pretrained)
    rows = [
        ("pool / added / learnable after", f"{pool.height} / {added.height} / {full['learnable']}"),
        ("full run on pool: s (rollouts + gradients)", f"{first['seconds']:.1f} ({first['rollout_seconds']:.1f} + {first['gradient_seconds']:.1f})"),
        ("full recomputation on grown pool: s", f"{full['seconds']:.1f} ({full['rollout_seconds']:.1f} + {full['gradient_seconds']:.1f})"),
        ("incremental on grown pool: s", f"{incremental['seconds']:.1f} ({incremental['rollout_seconds']:.1f} + {incremental['gradient_seconds']:.1f})"),
        ("re-cost, wall time (incremental / full)", f"{incremental['seconds'] / full['seconds']:.3f}"),
        ("problems generated (incremental / full)", f"{incremental['generated']} / {full['generated']} = {incremental['generated'] / full['generated']:.3f}"),
        ("problems differentiated (incremental / full)", f"{incremental['differentiated']} / {full['differentiated']} = {incremental['differentiated'] / max(full['differentiated'], 1):.3f}"),
        ("selected subset equals full recomputation", str(incremental["subset"] == full["subset"])),
        ("features bitwise equal to full recomputation", str(torch.equal(incremental["features"], full["features"]))),
    ]
    print("\n| quantity | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
