"""The selection experiment end to end on the smoke preset (fewer arms), against a real on-disk Dagster instance and
DuckDB: every arm of every seed is evaluated at every step, the report's statistics, plot and tables reach the asset
metadata, docs-style PNG directory and DuckDB, and a rerun reuses every finished seed instead of recomputing it."""

import copy

import dagster as dg
import duckdb
import polars as pl
import pytest

from learnalign_pipeline.presets import SMOKE_EXPERIMENT

pytestmark = pytest.mark.slow

ARMS = ["random", "learnalign", "zero_variance", "gradalign_curriculum"]
COIN_FLIP_ARMS = ["random", "gradalign_curriculum"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    home = tmp_path_factory.mktemp("learnalign_home")
    png_dir = home / "docs"
    config = copy.deepcopy(SMOKE_EXPERIMENT)
    config["ops"]["experiment_runs"]["config"].update(arms=ARMS, coin_flip_arms=COIN_FLIP_ARMS)
    config["ops"]["experiment_report"] = {"config": {"png_dir": str(png_dir)}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNALIGN_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster_home"))
        (home / "dagster_home").mkdir()
        from learnalign_pipeline.definitions import defs

        job = defs().resolve_job_def("selection_experiment_job")
        with dg.DagsterInstance.get() as instance:
            first = job.execute_in_process(run_config=config, instance=instance)
            assert first.success
            # the same seeds again: only the seed steps and the report run, and every seed comes from the cache
            rerun = job.execute_in_process(
                run_config={
                    **config,
                    "ops": {k: v for k, v in config["ops"].items() if k in ("experiment_runs", "experiment_report")},
                },
                instance=instance,
                asset_selection=[
                    dg.AssetKey(k)
                    for k in (
                        "experiment_accuracy",
                        "experiment_selections",
                        "experiment_diagnostics",
                        "experiment_report",
                    )
                ],
            )
            assert rerun.success
            events = {
                key: instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization
                for key in ("experiment_accuracy", "experiment_report")
            }
            accuracy = first.output_for_node("experiment_runs", "experiment_accuracy")
            yield home, png_dir, events, accuracy


def test_every_arm_of_every_seed_is_evaluated_at_every_step(experiment):
    _, _, _, accuracy = experiment
    target = accuracy.filter(pl.col("eval_set") == "target")
    per_run = target.group_by("seed", "pool", "arm").agg(pl.col("step").sort())
    expected = {(s, p, a) for s in (0, 1) for p, arms in (("clean", ARMS), ("coin_flip", COIN_FLIP_ARMS)) for a in arms}
    assert {(s, p, a) for s, p, a, _ in per_run.iter_rows()} == expected
    assert all(steps == [0, 1, 2] for steps in per_run["step"].to_list())
    for name in ("off_target", "pool_weighted"):  # at the start and the end
        assert set(accuracy.filter(pl.col("eval_set") == name)["step"]) == {0, 2}
    # every arm of a seed starts from the same warm-up policy, evaluated once with the same samples
    start = target.filter(pl.col("step") == 0).group_by("seed").agg(pl.col("accuracy").n_unique())
    assert (start["accuracy"] == 1).all()


def test_report_reaches_metadata_docs_and_duckdb_and_rerun_reuses_seeds(experiment):
    home, png_dir, events, accuracy = experiment
    report = events["experiment_report"].metadata
    contrasts = report["contrasts"].value
    for line in ("learnalign − random", "zero_variance − random", "gradalign_curriculum − random"):
        assert line in contrasts
    assert "power check" in report["summary"].value
    assert (png_dir / "selection_experiment.png").read_bytes()[:4] == b"\x89PNG"
    assert "corrupted_percent" in report["corrupted_share_on_coin_flip_pool"].value
    assert "0 computed, 2 from the cache" in events["experiment_accuracy"].metadata["summary"].value
    with duckdb.connect(str(home / "results.duckdb"), read_only=True) as conn:
        runs = conn.execute("SELECT count(DISTINCT run_id), count(*) FROM selection_experiment").fetchone()
        contrasts_rows = conn.execute("SELECT count(*) FROM selection_experiment_contrasts").fetchone()[0]
    assert runs == (2, 2 * accuracy.height)  # both runs appended, identical rows
    assert contrasts_rows > 0
