"""The daily loop on a real on-disk Dagster instance: a watched dataset file is observed, declarative automation
(the conditions the code location ships) decides what to run, and only what the edit affects is requested.

Automation is evaluated with `dg.evaluate_automation_conditions`, passing the cursor from tick to tick the way the
automation sensor does; the first tick only sets the baseline."""

import dagster as dg
import pytest
from automation_loop import Loop, jsonl

from learnalign_pipeline.core.data.arithmetic import generate_problems
from learnalign_pipeline.lib.resources import DatasetFiles

DATA = ["benchmark_problems", "benchmark_rejected_problems", "raw_problems", "rejected_problems"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A file-backed pool and benchmark, watched through the `datasets` resource the code location builds from env."""
    pool, test = tmp_path / "pool.jsonl", tmp_path / "test.jsonl"
    pool.write_text(jsonl(generate_problems(30, seed=11)))
    test.write_text(jsonl(generate_problems(20, seed=12)))
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEARNALIGN_POOL_PATH", str(pool))
    monkeypatch.setenv("LEARNALIGN_BENCHMARK_PATH", str(test))
    return pool, test


@pytest.fixture
def loop(files, tmp_path):
    from learnalign_pipeline.definitions import defs

    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        pool, test = files
        loop = Loop(defs(), instance, DatasetFiles(pool_path=str(pool), benchmark_path=str(test)))
        loop.run(["pool_dataset", "benchmark_dataset", *DATA])  # the job observes the sources, then loads
        assert loop.tick() == set()  # baseline tick
        yield loop


def test_the_code_location_watches_the_configured_files(loop, files):
    pool, _ = files
    raw = loop.instance.get_latest_materialization_event(dg.AssetKey("raw_problems")).asset_materialization
    assert raw.metadata["source"].value == str(pool) and raw.metadata["accepted"].value == 30
    observation = loop.instance.fetch_observations(dg.AssetKey("pool_dataset"), limit=1).records[0].asset_observation
    import hashlib

    assert observation.data_version == hashlib.sha256(pool.read_bytes()).hexdigest()
    # the materialization recorded which observed version it was built from
    assert raw.tags["dagster/input_data_version/pool_dataset"] == observation.data_version


def test_unchanged_dataset_triggers_nothing_and_an_edit_reruns_exactly_what_it_affects(loop, files):
    pool, test = files
    loop.observe()  # same bytes, new observation events
    assert loop.tick() == set()

    # An edit that leaves the problem table unchanged (a duplicate line): the load re-runs, and in the same tick (one
    # run) the pool below it, deduplicated against the benchmark. Their content-hash data versions are unchanged,
    # so nothing further is requested and the gated steps are not touched.
    test.write_text(test.read_text() + test.read_text().splitlines(keepends=True)[0])
    loop.observe()
    requested = loop.tick()
    assert requested == set(DATA)
    before = {k: loop.version(k) for k in DATA}
    loop.run(requested)
    assert {k: loop.version(k) for k in DATA} == before
    assert loop.tick() == set()

    # A real edit to the pool: only the pool's tables re-run; the benchmark and pre-training are not touched.
    pool.write_text(pool.read_text() + jsonl(generate_problems(3, seed=99)))
    loop.observe()
    assert loop.tick() == {"raw_problems", "rejected_problems"}
    old = loop.version("raw_problems")
    loop.run(["raw_problems", "rejected_problems"])
    assert loop.version("raw_problems") != old
    assert loop.materializations("benchmark_problems") == 2
    # raw_problems' children are not materialized here (missing: pretrained_policy blocks them), so nothing follows;
    # tests/integration/test_reselection_loop.py follows the whole selection path.
    assert loop.tick() == set()


def test_a_benchmark_edit_requests_the_pool_below_it_in_the_same_tick(loop, files):
    _, test = files
    test.write_text(jsonl(generate_problems(21, seed=12)))  # one more benchmark problem
    loop.observe()
    # The benchmark tables and the pool (deduplicated against the benchmark) in one tick, so one run loads them in
    # order; pre-training (excludes benchmark problems) is a gated GPU step and waits for the nightly window.
    assert loop.tick() == set(DATA)


def test_dataset_observations_run_on_their_cron(loop):
    requested = loop.tick(minutes=16)  # at least one */15 tick passed
    assert {"pool_dataset", "benchmark_dataset"} <= requested
    assert not requested & set(DATA)
