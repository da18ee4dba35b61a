"""The whole re-selection path on real assets (smoke-sized, file-backed dataset, on-disk instance):

- bumping one asset's code version makes it, and nothing else, stale; "Materialize unsynced" recomputes only it, and
  since its output is byte-identical (content-hash data version) nothing below goes stale; automation re-runs it
  with the path below it in one run, every output byte-identical;
- editing the pool file re-runs, in ONE automated run, raw_problems and the selection path down to selected_subset
  under the same warm-up policy (so rollouts are generated only for the new problems), never the benchmark;
  policy training (pre-training, warm-up, GRPO) waits for its nightly window.
"""

import copy
import datetime

import dagster as dg
import pytest
from automation_loop import Loop, jsonl
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from learnalign_pipeline.core.data.arithmetic import generate_problems
from learnalign_pipeline.lib.resources import DatasetFiles
from learnalign_pipeline.presets import SMOKE

pytestmark = pytest.mark.slow

GATED = {"pretrained_policy", "warmup_policy", "trained_policy", "benchmark_results"}
# What a pool edit re-runs: the pool's tables and the selection path below them.
PATH = {
    "raw_problems",
    "rejected_problems",
    "rollouts",
    "success_rates",
    "projected_gradients",
    "learnability_scores",
    "alignment_scores",
    "alignment_matrix",
    "selected_subset",
}
# The smoke preset with a far smaller pre-training: these tests need a policy, not a good one.
TINY = copy.deepcopy(SMOKE)
TINY["ops"]["pretrained_policy"]["config"].update(corpus_size=300, steps=4, batch_size=16, intermediate_size=64)
TINY["ops"]["warmup_policy"]["config"].update(subset_size=8, steps=1, num_samples=2)
TINY["ops"]["rollouts_and_success_rates"]["config"].update(num_samples=2)
TINY["ops"]["selected_subset"]["config"].update(budget=8)


def stale_status(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, StaleStatus]:
    """Dagster's own staleness ("Unsynced" in the UI); private API, pinned dagster version."""
    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    return {k.to_user_string(): resolver.get_status(k) for k in graph.materializable_asset_keys}


def descendants(defs: dg.Definitions, key: str) -> set[str]:
    return {
        k.to_user_string() for k in dg.AssetSelection.assets(key).downstream().resolve(defs.resolve_asset_graph())
    } - {key}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reselection")
    pool, test = root / "pool.jsonl", root / "test.jsonl"
    pool.write_text(jsonl(generate_problems(16, seed=21)))
    test.write_text(jsonl(generate_problems(12, seed=22)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNALIGN_HOME", str(root / "home"))
        mp.setenv("LEARNALIGN_POOL_PATH", str(pool))
        mp.setenv("LEARNALIGN_BENCHMARK_PATH", str(test))
        from learnalign_pipeline.definitions import defs

        definitions = defs()
        (root / "instance").mkdir()
        with dg.instance_for_test(temp_dir=str(root / "instance")) as instance:
            loop = Loop(definitions, instance, DatasetFiles(pool_path=str(pool), benchmark_path=str(test)))
            loop.observe()
            selection = definitions.resolve_job_def("reselection_job").asset_layer.executable_asset_keys
            loop.run([k.to_user_string() for k in selection], TINY)
            assert loop.tick() == set()  # baseline
            yield loop, pool


def test_a_code_version_bump_makes_only_that_asset_stale_and_recomputes_only_it(world):
    loop, _ = world
    fresh = stale_status(loop.defs, loop.instance)
    assert {k for k, s in fresh.items() if s != StaleStatus.MISSING} >= {"raw_problems", "selected_subset"}
    assert {k for k, s in fresh.items() if s == StaleStatus.STALE} == set()

    bumped = loop.defs.permissive_map_resolved_asset_specs(
        func=lambda spec: spec.replace_attributes(code_version=f"{spec.code_version}-bumped"),
        selection="learnability_scores",
    )
    status = stale_status(bumped, loop.instance)
    stale = {k for k, s in status.items() if s == StaleStatus.STALE}
    assert stale == {"learnability_scores"}  # staleness is one hop: children follow only if its data changes

    counts = {k: loop.materializations(k) for k in status}
    below = {"learnability_scores", "alignment_scores", "alignment_matrix", "selected_subset"}
    before = {k: loop.version(k) for k in below}
    bumped_loop = Loop(bumped, loop.instance, loop.datasets)
    bumped_loop.cursor, bumped_loop.time = loop.cursor, loop.time
    bumped_loop.run(stale, TINY)  # "Materialize unsynced"
    assert {k for k in status if loop.materializations(k) != counts[k]} == {"learnability_scores"}
    assert loop.version("learnability_scores") == before["learnability_scores"]  # same bytes, same data version
    after = stale_status(bumped, loop.instance)
    assert {k for k, s in after.items() if s == StaleStatus.STALE} == set()  # nothing below became stale

    # Automation sees the new code version too: the asset and the path below it, in one tick (one run), once.
    assert bumped_loop.tick() == below
    bumped_loop.run(below, TINY)
    assert bumped_loop.tick() == set()
    assert {k: loop.version(k) for k in below} == before  # every output byte-identical


def test_a_pool_edit_reruns_the_selection_path_and_training_waits_for_its_cron(world):
    loop, pool = world
    pool.write_text(pool.read_text() + jsonl(generate_problems(4, seed=77)))
    loop.observe()
    affected = descendants(loop.defs, "pool_dataset")
    counts = {k: loop.materializations(k) for k in stale_status(loop.defs, loop.instance)}
    ticks = []
    for _ in range(10):
        requested = loop.tick()
        if not requested:
            break
        ticks.append(requested)
        assert requested <= affected - GATED, requested
        loop.run(requested, TINY)
    rerun = {k for k in counts if loop.materializations(k) != counts[k]}
    assert {"raw_problems", "rollouts", "projected_gradients", "alignment_scores", "selected_subset"} <= rerun
    assert not rerun & {"benchmark_problems", "benchmark_rejected_problems", "pretrained_policy", "warmup_policy"}
    # Same warm-up policy, so the row cache serves every old problem: only the (at most 4) new ones are generated.
    meta = loop.instance.get_latest_materialization_event(dg.AssetKey("rollouts")).asset_materialization.metadata
    generated, reused = meta["generated_problems"].value, meta["reused_problems"].value
    assert 1 <= generated <= 4 and reused >= 12, (generated, reused)
    # The whole path in the tick after the observation, so in one run, in dependency order: selected_subset (which
    # also reads raw_problems directly) runs only after alignment_scores, never on old scores and a new pool.
    assert len(ticks) == 1 and ticks[0] == PATH
    status = stale_status(loop.defs, loop.instance)
    assert {k for k in affected - GATED if status[k] == StaleStatus.STALE} == set()

    # Training is gated: nothing until the nightly window opens at 02:00 UTC. Then the steps whose inputs changed
    # during the day are requested: the warm-up policy (it trains on pool problems), with the selection path below it
    # in the same run (re-scored under the new warm-up policy), GRPO training and the benchmark; the pool's tables
    # and pre-training, whose inputs did not change, are not.
    next_two = (loop.time + datetime.timedelta(days=1)).replace(hour=2, minute=1)
    if next_two - loop.time > datetime.timedelta(days=1):
        next_two -= datetime.timedelta(days=1)
    assert loop.tick() == set()
    requested = loop.tick(minutes=(next_two - loop.time).total_seconds() / 60) - {"pool_dataset", "benchmark_dataset"}
    below_warmup = PATH - {"raw_problems", "rejected_problems"}
    assert requested == {"warmup_policy", "trained_policy", "benchmark_results"} | below_warmup, requested
    assert loop.tick(minutes=1) == set()  # requested once: handled, not re-requested while the window is open
