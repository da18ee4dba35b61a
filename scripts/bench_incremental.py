"""Benchmark of row-level reuse: what adding 5% new problems to the pool costs, against a full run.

With a finished demo run's warm-up and pre-trained checkpoints and its pool (`--artifacts`):

1. full run on the pool, cold row cache: rollouts (K samples per problem, verified), gradient features of the
   learnable problems, LearnAlign scores, top-N subset;
2. the pool plus `--added` (default 5%) new problems, on the warm cache of run 1: only missing rows are computed;
3. the same grown pool on a cold cache (full recomputation).

It reports the re-cost of run 2 relative to run 3 (wall time, problems generated, problems differentiated) and
whether run 2's subset and features equal run 3's. The stages are the objects the assets run
(`core/selection/stages.py` RolloutStage and FeatureStage, built from the settings objects' defaults, shard by
shard as the sharded assets' steps do, one after another in this process: sharding changes nothing in the results).

    python scripts/bench_incremental.py --artifacts .learnalign/artifacts
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from learnalign_pipeline.core.data.arithmetic import arithmetic_frame
from learnalign_pipeline.core.policy.generation import TransformersBackend
from learnalign_pipeline.core.policy.model import load_policy
from learnalign_pipeline.core.policy.rollouts import success_rates
from learnalign_pipeline.core.selection.config import AlignmentConfig, FeatureConfig, RolloutConfig, SelectionConfig
from learnalign_pipeline.core.selection.features import scatter_rows
from learnalign_pipeline.core.selection.scoring import learnability, learnalign_scores, top_n, unit_rows
from learnalign_pipeline.core.selection.stages import FeatureStage, RolloutStage, shard_rows
from learnalign_pipeline.core.storage.row_cache import RowCache
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.lib.console import quiet_libraries
from learnalign_pipeline.lib.resources import Generator
from learnalign_pipeline.lib.sharded import NUM_SHARDS


def newest(directory: Path, asset: str) -> Path:
    return sorted((directory / asset).iterdir(), key=lambda p: p.stat().st_mtime)[-1]


def run(cache: RowCache, pool: pl.DataFrame, warmup: Path, pretrained: Path) -> dict:
    """Rollouts -> success rates -> gradient features -> scores -> subset, computing only what `cache` lacks."""
    task, settings = TaskConfig(), RolloutConfig()
    verifier = task.make_verifier()
    started = time.perf_counter()
    rollout_stage = RolloutStage(cache, settings, task, warmup.name, Generator().engine_settings(settings.backend))
    generated = 0
    for shard in range(NUM_SHARDS):
        make_backend = lambda: TransformersBackend(*load_policy(warmup))  # noqa: E731
        generated += rollout_stage.generate_missing(shard_rows(pool, shard, NUM_SHARDS), make_backend, verifier)[
            "generated_problems"
        ]
    rollouts = rollout_stage.gather(pool)
    rates = success_rates(rollouts)
    rollout_seconds = time.perf_counter() - started

    started = time.perf_counter()
    loss = GRPOConfig().loss(task.max_new_tokens)
    feature_stage = FeatureStage(cache, FeatureConfig(), task, loss, warmup.name, pretrained.name)
    batches = feature_stage.plan(pool, rollouts, rates, NUM_SHARDS)

    def load_models():
        model, tokenizer = load_policy(warmup)
        return model, load_policy(pretrained)[0], tokenizer

    differentiated = 0
    for shard in range(NUM_SHARDS):
        mine = [b for b in batches if b.shard == shard]
        differentiated += feature_stage.compute_missing(mine, pool, rollouts, load_models)["computed_problems"]
    active = feature_stage.active(pool, rates)
    result = feature_stage.gather(batches, active["problem_id"].to_list())
    gradient_seconds = time.perf_counter() - started

    ids = rates["problem_id"].to_list()
    full = scatter_rows(ids, result)
    unit = (
        unit_rows(full, FeatureConfig().norm_floor)[0].to(torch.float16).float()
    )  # the asset stores float16 unit features
    weights = learnability(torch.tensor(rates["success_rate"].to_numpy(), dtype=torch.float64)).float()
    scores = learnalign_scores(weights, unit, include_self=AlignmentConfig().include_self)[0]
    subset = [ids[i] for i in top_n(scores.double(), ids, SelectionConfig().budget)]
    return {
        "seconds": rollout_seconds + gradient_seconds,
        "rollout_seconds": rollout_seconds,
        "gradient_seconds": gradient_seconds,
        "generated": generated,
        "differentiated": differentiated,
        "learnable": active.height,
        "subset": subset,
        "features": full,
        "pool": pool.height,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--artifacts", type=Path, required=True, help="LEARNALIGN_HOME/artifacts of a finished demo run"
    )
    parser.add_argument("--added", type=float, default=0.05, help="new problems as a share of the pool")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quiet_libraries()  # a table on the console, not a weight-loading bar per model load
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
        (
            "full run on pool: s (rollouts + gradients)",
            f"{first['seconds']:.1f} ({first['rollout_seconds']:.1f} + {first['gradient_seconds']:.1f})",
        ),
        (
            "full recomputation on grown pool: s",
            f"{full['seconds']:.1f} ({full['rollout_seconds']:.1f} + {full['gradient_seconds']:.1f})",
        ),
        (
            "incremental on grown pool: s",
            f"{incremental['seconds']:.1f} ({incremental['rollout_seconds']:.1f} + {incremental['gradient_seconds']:.1f})",
        ),
        ("re-cost, wall time (incremental / full)", f"{incremental['seconds'] / full['seconds']:.3f}"),
        (
            "problems generated (incremental / full)",
            f"{incremental['generated']} / {full['generated']} = {incremental['generated'] / full['generated']:.3f}",
        ),
        (
            "problems differentiated (incremental / full)",
            f"{incremental['differentiated']} / {full['differentiated']} = {incremental['differentiated'] / max(full['differentiated'], 1):.3f}",
        ),
        ("selected subset equals full recomputation", str(incremental["subset"] == full["subset"])),
        ("features bitwise equal to full recomputation", str(torch.equal(incremental["features"], full["features"]))),
    ]
    print("\n| quantity | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
