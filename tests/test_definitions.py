"""The code location loads, every stage is present and wired, and `dg check defs` accepts it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

from learnalign_pipeline.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    "pool_dataset", "benchmark_dataset", "benchmark_problems", "raw_problems", "pretrained_policy", "warmup_policy", "rollouts", "success_rates",
    "projected_gradients", "learnability_scores", "alignment_scores", "alignment_matrix", "selected_subset",
    "trained_policy", "benchmark_results",
]
EDGES = [
    ("pool_dataset", "raw_problems"), ("benchmark_dataset", "benchmark_problems"), ("benchmark_problems", "raw_problems"), ("raw_problems", "warmup_policy"), ("pretrained_policy", "warmup_policy"),
    ("warmup_policy", "rollouts"), ("warmup_policy", "success_rates"), ("rollouts", "projected_gradients"),
    ("success_rates", "projected_gradients"), ("success_rates", "learnability_scores"),
    ("learnability_scores", "alignment_scores"), ("projected_gradients", "alignment_scores"),
    ("alignment_scores", "selected_subset"), ("selected_subset", "trained_policy"), ("warmup_policy", "trained_policy"),
    ("trained_policy", "benchmark_results"), ("benchmark_problems", "benchmark_results"),
]


def test_every_stage_and_edge_is_defined():
    graph = defs().resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(STAGES) <= keys
    for parent, child in EDGES:
        assert dg.AssetKey(parent) in graph.get(dg.AssetKey(child)).parent_keys, (parent, child)


def test_every_asset_is_versioned_and_heavy_steps_are_gpu_tagged():
    graph = defs().resolve_asset_graph()
    for key in graph.materializable_asset_keys:  # observable sources have none: their observation is the version
        node = graph.get(key)
        assert node.code_version, f"{key.to_user_string()} has no code_version"
    assert {k.to_user_string() for k in graph.observable_asset_keys} == {"pool_dataset", "benchmark_dataset"}
    for heavy in ["pretrained_policy", "warmup_policy", "rollouts", "projected_gradients", "trained_policy", "benchmark_results"]:
        node = graph.get(dg.AssetKey(heavy))
        assert node.pools == {"gpu"}, heavy
        assert "pytorch" in node.kinds and node.tags.get("hardware") == "gpu", heavy


def test_dg_check_defs_passes(tmp_path):
    dg_cli = shutil.which("dg", path=str(Path(sys.executable).parent)) or shutil.which("dg")
    env = {**os.environ, "LEARNALIGN_HOME": str(tmp_path)}
    result = subprocess.run([dg_cli, "check", "defs"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
