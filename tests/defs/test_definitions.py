"""The code location loads, every stage is present and wired, and `dg check defs` accepts it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

from learnalign_pipeline.definitions import defs

ROOT = Path(__file__).resolve().parents[2]


def _asset_spec_data(graph, key: dg.AssetKey) -> dict:
    node = graph.get(key)
    condition = node.automation_condition
    return {
        "deps": sorted(k.to_user_string() for k in node.parent_keys),
        "group": node.group_name,
        "code_version": node.code_version,
        "kinds": sorted(node.kinds),
        "pools": sorted(p for p in node.pools if p),
        "tags": dict(sorted(node.tags.items())),
        "automation": condition.get_label() if condition is not None else None,
        "observable": node.is_observable,
    }


def test_asset_specs_snapshot(snapshot):
    """Every asset's key, deps, group, code version, kinds, pools, tags and automation condition. A change to the
    graph or to its automation shows up here as a reviewed diff (`pytest --snapshot-update` after checking it)."""
    graph = defs().resolve_asset_graph()
    specs = {k.to_user_string(): _asset_spec_data(graph, k) for k in sorted(graph.get_all_asset_keys())}
    assert specs == snapshot


def test_jobs_snapshot(snapshot):
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    jobs = {}
    for job in sorted(definitions.jobs, key=lambda j: j.name):
        keys = job.selection.resolve(graph) if hasattr(job, "selection") else set()
        jobs[job.name] = sorted(k.to_user_string() for k in keys)
    assert "training_window" not in jobs["learnalign_job"]  # observing it would open the nightly training window
    assert {"pool_dataset", "benchmark_dataset"} <= set(jobs["learnalign_job"])  # the watched files are observed
    assert jobs == snapshot


def test_every_asset_is_versioned_and_heavy_steps_are_gpu_tagged():
    graph = defs().resolve_asset_graph()
    for key in graph.materializable_asset_keys:  # observable sources have none: their observation is the version
        node = graph.get(key)
        assert node.code_version, f"{key.to_user_string()} has no code_version"
    assert {k.to_user_string() for k in graph.observable_asset_keys} == {
        "pool_dataset",
        "benchmark_dataset",
        "training_window",
    }
    for heavy in [
        "pretrained_policy",
        "warmup_policy",
        "rollouts",
        "projected_gradients",
        "trained_policy",
        "benchmark_results",
    ]:
        node = graph.get(dg.AssetKey(heavy))
        assert node.pools == {"gpu"}, heavy
        assert "pytorch" in node.kinds and node.tags.get("hardware") == "gpu", heavy


def test_dg_check_defs_passes(tmp_path):
    dg_cli = shutil.which("dg", path=str(Path(sys.executable).parent)) or shutil.which("dg")
    env = {**os.environ, "LEARNALIGN_HOME": str(tmp_path)}
    result = subprocess.run([dg_cli, "check", "defs"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
