"""Row-level reuse (core): content-defined batches, exact reuse of gradient-feature batches across shard counts,
reruns and pool edits, and per-problem reuse of rollouts."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

import learnalign_pipeline
from learnalign_pipeline.core.data.arithmetic import arithmetic_frame
from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.policy.rollouts import sample_rollouts, success_rates
from learnalign_pipeline.core.selection.config import FeatureConfig, RolloutConfig
from learnalign_pipeline.core.selection.features import gradient_features
from learnalign_pipeline.core.selection.projection import KroneckerProjector
from learnalign_pipeline.core.selection.stages import FEATURE_CODE, ROLLOUT_CODE, FeatureStage, RolloutStage
from learnalign_pipeline.core.storage.hashing import source_closure, stable_hash
from learnalign_pipeline.core.storage.row_cache import RowCache, content_batches, problem_keys
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.task.verify import NumericVerifier
from learnalign_pipeline.core.training.config import GRPOConfig


def _keys(n: int, salt: str) -> list[str]:
    return [stable_hash(salt, str(i)) for i in range(n)]


def test_content_batches_change_only_where_a_key_was_added():
    old = _keys(400, "pool")
    new = old + _keys(20, "added")
    as_sets = lambda keys: {frozenset(keys[i] for i in b) for b in content_batches(keys, 4)}  # noqa: E731
    before, after = as_sets(old), as_sets(new)
    gone, made = before - after, after - before
    assert 0 < len(gone) <= 20  # each added key changes at most the one batch it falls into (joins or splits it)
    old_members = lambda batches: set().union(*batches) - set(new[400:])  # noqa: E731
    assert old_members(made) == old_members(gone)  # every other old problem stays in exactly its old batch
    assert as_sets(list(reversed(new))) == after  # input order does not matter
    sizes = [len(b) for b in content_batches(new, 4)]
    assert max(sizes) <= 32 and 2 < sum(sizes) / len(sizes) < 8


@pytest.fixture()
def setup(model, tokenizer):
    pool = arithmetic_frame(16, seed=11, split="pool")
    extra = (
        arithmetic_frame(40, seed=12, split="pool")
        .filter(~pl.col("problem_id").is_in(pool["problem_id"].to_list()))
        .head(4)
    )
    both = pl.concat([pool, extra])
    rollouts = sample_rollouts(
        TransformersBackend(model, tokenizer), both, SamplingSpec(4, 1.0, 1.0, 8), NumericVerifier(), "qa", 0
    )
    rollouts = rollouts.with_columns(
        (pl.col("sample_index") % 2).cast(pl.Float32).alias("reward")
    )  # every group learnable
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return pool, both, rollouts, reference


def _stage(cache) -> FeatureStage:
    settings = FeatureConfig(kronecker_in=8, kronecker_out=8, problems_per_batch=3)
    return FeatureStage(
        cache, settings, TaskConfig(), GRPOConfig(beta=0.04).loss(32), policy="policy", reference="reference"
    )


def _plan(stage, problems, rollouts, num_shards):
    rates = success_rates(rollouts.filter(pl.col("problem_id").is_in(problems["problem_id"].to_list())))
    return stage.plan(problems, rollouts, rates, num_shards)


def _features(cache, problems, rollouts, model, reference, tokenizer, num_shards, shards=None):
    """Plan, compute shard by shard (optionally only `shards`), gather: what the sharded asset does."""
    stage = _stage(cache)
    batches = _plan(stage, problems, rollouts, num_shards)
    stats = []
    for shard in sorted({b.shard for b in batches}) if shards is None else shards:
        mine = [b for b in batches if b.shard == shard]
        stats.append(stage.compute_missing(mine, problems, rollouts, lambda: (model, reference, tokenizer)))
    return stage.gather(batches, problems["problem_id"].to_list()), stats, batches


def test_feature_batches_are_exact_across_shard_counts_reruns_and_pool_edits(tmp_path, model, tokenizer, setup):
    pool, both, rollouts, reference = setup
    one, _, _ = _features(RowCache(tmp_path / "a"), pool, rollouts, model, reference, tokenizer, num_shards=1)
    three, _, _ = _features(RowCache(tmp_path / "b"), pool, rollouts, model, reference, tokenizer, num_shards=3)
    assert one.problem_ids == three.problem_ids == pool["problem_id"].to_list()
    assert torch.equal(one.features, three.features) and one.features.abs().sum() > 0  # bitwise, not just close

    again, stats, batches = _features(
        RowCache(tmp_path / "b"), pool, rollouts, model, reference, tokenizer, num_shards=2
    )
    assert sum(s["computed_batches"] for s in stats) == 0 and sum(s["reused_batches"] for s in stats) == len(batches)
    assert torch.equal(again.features, one.features)

    # The pool grows by 4 problems: only the batches they fall into are computed, and the result is bitwise what a
    # cold run on the grown pool computes.
    grown, stats, batches = _features(
        RowCache(tmp_path / "b"), both, rollouts, model, reference, tokenizer, num_shards=3
    )
    cold, _, _ = _features(RowCache(tmp_path / "c"), both, rollouts, model, reference, tokenizer, num_shards=3)
    assert torch.equal(grown.features, cold.features)
    computed = sum(s["computed_problems"] for s in stats)
    assert 4 <= computed < both.height and sum(s["computed_batches"] for s in stats) <= 2 * 4  # a join or a split each
    old_batches = {b.problem_ids for b in _plan(_stage(RowCache(tmp_path / "d")), pool, rollouts, 1)}
    new_batches = {b.problem_ids for b in _plan(_stage(RowCache(tmp_path / "d")), both, rollouts, 1)}
    assert computed == sum(len(b) for b in new_batches - old_batches)

    # A batch computed in a different composition would differ in the last bits: that is why membership is content-defined.
    mixed = gradient_features(
        model,
        reference,
        tokenizer,
        both,
        rollouts,
        GRPOConfig(beta=0.04).loss(32),
        KroneckerProjector(8, 8, seed=0),
        "qa",
        problems_per_batch=both.height,
    )
    torch.testing.assert_close(mixed.features, cold.features, rtol=1e-4, atol=1e-6)


def test_rollouts_are_reused_per_problem_and_equal_one_unsharded_call(tmp_path, model, tokenizer):
    pool = arithmetic_frame(24, seed=5, split="pool")
    spec, verifier = SamplingSpec(3, 1.0, 1.0, 8), NumericVerifier()
    backend = TransformersBackend(model, tokenizer)
    direct = sample_rollouts(backend, pool, spec, verifier, "qa", 7)
    stage = RolloutStage(
        RowCache(tmp_path),
        RolloutConfig(num_samples=3, seed=7, problems_per_file=4),
        TaskConfig(max_new_tokens=8),
        "policy",
        {},
    )
    made = []

    def make_backend():
        made.append(1)
        return backend

    half = pool.head(10)
    first = stage.generate_missing(half, make_backend, verifier)
    assert first["generated_problems"] == 10 and first["files"] == 3
    second = stage.generate_missing(pool, make_backend, verifier)
    assert second["reused_problems"] == 10 and second["generated_problems"] == 14
    third = stage.generate_missing(pool, make_backend, verifier)
    assert third["generated_problems"] == 0 and len(made) == 2  # nothing missing: no backend was even built
    gathered = stage.gather(pool)
    assert gathered.equals(direct)
    files = stage.cache.row_files(stage.namespace)
    assert "row_key" in pl.read_parquet(files[0]).columns
    assert set(pl.concat([pl.read_parquet(p) for p in files])["row_key"]) == set(problem_keys(pool))
    with pytest.raises(ValueError, match="missing from the row cache"):
        RolloutStage(RowCache(tmp_path / "empty"), stage.settings, stage.task, "policy", {}).gather(pool)


def test_tampered_or_truncated_row_files_are_named_dropped_and_generated_again(tmp_path, model, tokenizer):
    pool = arithmetic_frame(12, seed=5, split="pool")
    verifier, backend = NumericVerifier(), TransformersBackend(model, tokenizer)
    settings = RolloutConfig(num_samples=3, seed=7, problems_per_file=4)
    stage = RolloutStage(RowCache(tmp_path), settings, TaskConfig(max_new_tokens=8), "policy", {})
    assert stage.generate_missing(pool, lambda: backend, verifier)["files"] == 3
    reference = stage.gather(pool)
    tampered, truncated, intact = stage.cache.row_files(stage.namespace)
    # a valid Parquet file whose rewards were rewritten to 1.0, and a file cut in half
    pl.read_parquet(tampered).with_columns(pl.lit(1.0, pl.Float32).alias("reward")).write_parquet(tampered)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    warnings: list[str] = []
    again = RolloutStage(RowCache(tmp_path, warn=warnings.append), settings, TaskConfig(max_new_tokens=8), "policy", {})
    stats = again.generate_missing(pool, lambda: backend, verifier)
    assert stats["reused_problems"] == 4 and stats["generated_problems"] == 8  # only the intact file was reused
    assert sorted(again.cache.dropped) == sorted([tampered.name, truncated.name])
    assert len(warnings) == 2 and all("modified or truncated after it was written" in w for w in warnings)
    assert {str(tampered), str(truncated)} == {w.split(" ")[3] for w in warnings}  # each names its file
    assert again.gather(pool).equals(reference)  # the rewards of the rows that were generated, not the tampered ones
    assert (tmp_path / tampered.relative_to(tmp_path)).with_name(tampered.name + ".corrupt").exists()
    assert intact in again.cache.row_files(again.namespace)


def test_a_corrupted_feature_batch_is_computed_again(tmp_path, model, tokenizer, setup):
    pool, _, rollouts, reference = setup
    first, _, batches = _features(RowCache(tmp_path), pool, rollouts, model, reference, tokenizer, num_shards=1)
    victim = sorted(RowCache(tmp_path).batch_files(_stage(RowCache(tmp_path)).namespace))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    cache = RowCache(tmp_path)
    again, stats, _ = _features(cache, pool, rollouts, model, reference, tokenizer, num_shards=1)
    assert stats[0]["computed_batches"] == 1 and stats[0]["reused_batches"] == len(batches) - 1
    assert cache.dropped == [victim.name] and torch.equal(again.features, first.features)


NAMESPACES = """
from learnalign_pipeline.core.selection.config import FeatureConfig, RolloutConfig
from learnalign_pipeline.core.selection.stages import FeatureStage, RolloutStage
from learnalign_pipeline.core.storage.row_cache import RowCache
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.training.config import GRPOConfig
import sys
cache = RowCache(sys.argv[1])
rollouts = RolloutStage(cache, RolloutConfig(), TaskConfig(), "policy", {})
features = FeatureStage(cache, FeatureConfig(), TaskConfig(), GRPOConfig().loss(8), "policy", "reference")
print(rollouts.namespace.key, features.namespace.key)
"""


def _namespace_keys(package_root, cache) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    done = subprocess.run(  # cwd: `python -c` puts it first on sys.path
        [sys.executable, "-c", NAMESPACES, str(cache)], env=env, cwd=package_root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rollouts, features = done.stdout.split()
    return rollouts, features


def test_an_edit_to_the_code_that_computes_rows_starts_a_fresh_namespace(tmp_path):
    """No version constant to bump: a change to a verifier (or the gradient math) is a change of the rows' key,
    a comment or docstring edit is not."""
    source = Path(learnalign_pipeline.__file__).parent
    copies = {}
    for name, (module, edit) in {
        "same": (None, None),
        "verifier": ("core/task/verify.py", "\nTOLERANCE_EDIT = 1e-9\n"),
        "projection": ("core/selection/projection.py", "\nSEED_OFFSET_EDIT = 1\n"),
        "comment": ("core/task/verify.py", "\n# a comment\n"),
    }.items():
        root = tmp_path / name
        shutil.copytree(source, root / "learnalign_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
        if module:
            with open(root / "learnalign_pipeline" / module, "a") as f:
                f.write(edit)
        copies[name] = _namespace_keys(root, tmp_path / "cache")
    assert copies["comment"] == copies["same"]
    assert copies["verifier"][0] != copies["same"][0]  # rollouts are scored by the verifier
    assert copies["projection"] == (copies["same"][0], copies["projection"][1]) != copies["same"]  # features only


def test_the_rows_code_closure_follows_imports():
    rollouts = source_closure(*(f"learnalign_pipeline.core.{m}" for m in ROLLOUT_CODE))
    assert {"learnalign_pipeline.core.task.verify_math", "learnalign_pipeline.core.storage.hashing"} <= set(rollouts)
    assert "learnalign_pipeline.core.selection.projection" not in rollouts
    features = source_closure(*(f"learnalign_pipeline.core.{m}" for m in FEATURE_CODE))
    assert "learnalign_pipeline.core.selection.projection" in features
