"""Materialize the whole graph on the smoke preset through the CLI a user runs (`learnalign demo --preset smoke`)
against a real on-disk Dagster instance, then check what it printed and every artifact it wrote."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
import torch

from learnalign_pipeline.core.data.schema import PROBLEM_SCHEMA
from learnalign_pipeline.core.policy.model import load_policy
from learnalign_pipeline.core.selection.methods import LEARNABLE_ONLY
from learnalign_pipeline.core.storage.artifacts import Checkpoint, TensorBundle, read_artifact
from learnalign_pipeline.core.storage.hashing import tree_digest
from learnalign_pipeline.presets import SMOKE, SMOKE_COMPARISON, SMOKE_CURRICULUM

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`learnalign demo --preset smoke` in a fresh LEARNALIGN_HOME: (home, console output)."""
    home = tmp_path_factory.mktemp("learnalign_home")
    env = {**os.environ, "LEARNALIGN_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    cli = Path(sys.executable).with_name("learnalign")
    done = subprocess.run(
        [str(cli), "demo", "--preset", "smoke"], env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return home, done.stdout + done.stderr


@pytest.fixture(scope="module")
def materialized(demo):
    home, _ = demo
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNALIGN_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster_home"))
        from learnalign_pipeline.definitions import defs

        definitions = defs()
        with dg.DagsterInstance.get() as instance:
            events = {
                key.to_user_string(): instance.get_latest_materialization_event(key).asset_materialization
                for key in definitions.resolve_job_def("learnalign_job").asset_layer.executable_asset_keys
                if key
                in definitions.resolve_asset_graph().materializable_asset_keys  # sources are observed, not materialized
            }
            yield home, events, instance


def test_console_names_every_stage_with_its_duration_in_few_lines(demo, materialized):
    home, output = demo
    _, events, _ = materialized
    lines = output.splitlines()
    assert len(lines) < 80, output
    ended = dict(re.findall(r"^✓ (\w+) \(([\d.]+ s|\d+ min \d+ s)\)", output, flags=re.M))
    assert set(events) <= set(ended), f"stages without an end line: {set(events) - set(ended)}"
    assert "learnalign_job succeeded" in output and "| pretrained |" in output  # the verdict and the benchmark table
    log = re.search(r"full log: (\S+)", output).group(1)
    assert Path(log).is_file() and Path(log).is_relative_to(home / "logs") and "STEP_SUCCESS" in Path(log).read_text()
    for noise in ("DEBUG", "Loading weights", "BetaWarning", "Warning:"):
        assert noise not in output, f"library noise on the console: {noise}"


def _load(event):
    return read_artifact(Path(event.metadata["path"].value), event.metadata["sha256"].value)


def test_every_asset_was_materialized_with_a_verified_artifact(materialized):
    home, events, _ = materialized
    assert set(events) == {
        "benchmark_problems",
        "benchmark_rejected_problems",
        "raw_problems",
        "rejected_problems",
        "pretrained_policy",
        "warmup_policy",
        "rollouts",
        "success_rates",
        "projected_gradients",
        "learnability_scores",
        "alignment_scores",
        "alignment_matrix",
        "selected_subset",
        "trained_policy",
        "benchmark_results",
    }
    for name, event in events.items():
        path = Path(event.metadata["path"].value)
        assert path.is_relative_to(home / "artifacts" / name), name
        assert path.name.startswith(event.metadata["sha256"].value[:16]), name  # content-addressed
        assert event.tags["dagster/data_version"] == event.metadata["sha256"].value, name  # content-hash data version
        assert _load(event) is not None
    staging = home / "artifacts" / ".staging"
    assert not staging.exists() or not any(staging.iterdir())  # every checkpoint was published


def test_tables_have_their_schemas_and_counts_reconcile(materialized):
    _, events, _ = materialized
    pool, test = _load(events["raw_problems"]), _load(events["benchmark_problems"])
    assert pool.schema == pl.Schema(PROBLEM_SCHEMA) and test.schema == pl.Schema(PROBLEM_SCHEMA)
    assert pool["problem_id"].is_unique().all() and not set(pool["problem_id"]) & set(test["problem_id"])
    rollouts, rates = _load(events["rollouts"]), _load(events["success_rates"])
    k = SMOKE["ops"]["rollouts_and_success_rates"]["config"]["num_samples"]
    assert rollouts.height == pool.height * k and rates.height == pool.height
    joined = rates.join(rollouts.group_by("problem_id").agg(pl.col("reward").mean().alias("p")), on="problem_id")
    assert (joined["success_rate"] - joined["p"]).abs().max() < 1e-6
    learn = _load(events["learnability_scores"])
    assert ((learn["learnability"] - learn["success_rate"] * (1 - learn["success_rate"])).abs() < 1e-9).all()
    subset = _load(events["selected_subset"])
    learnable = rates.filter((pl.col("success_rate") > 0) & (pl.col("success_rate") < 1)).height
    assert subset.height == min(SMOKE["ops"]["selected_subset"]["config"]["budget"], learnable) > 0
    assert ((subset["success_rate"] > 0) & (subset["success_rate"] < 1)).all()  # only learnable problems
    assert subset["rank"].to_list() == list(range(1, subset.height + 1))
    assert subset["score"].is_sorted(descending=True)
    assert set(subset["problem_id"]) <= set(pool["problem_id"])


def test_gradient_features_and_alignment_agree(materialized):
    _, events, _ = materialized
    grads = _load(events["projected_gradients"])
    assert isinstance(grads, TensorBundle)
    unit, norms = grads.tensors["unit_features"], grads.tensors["norms"]
    assert unit.dtype == torch.float16 and unit.shape[1] == events["projected_gradients"].metadata["width"].value
    assert grads.metadata["width"] == str(unit.shape[1]) and grads.metadata["scope"] == "all_linear"
    assert grads.metadata["projection"] == "kronecker" and grads.metadata["seed"] == "0"
    rates = _load(events["success_rates"])
    assert json.loads(grads.metadata["problem_ids"]) == rates["problem_id"].to_list()
    zero_variance = ((rates["success_rate"] == 0) | (rates["success_rate"] == 1)).to_numpy()
    assert (norms[torch.from_numpy(zero_variance)] == 0).all()  # skipped: no backward pass
    assert (norms > 0).sum() == (~zero_variance).sum() > 0  # every other problem got a gradient
    assert torch.allclose(unit[norms > 0].float().norm(dim=1), torch.ones(int((norms > 0).sum())), atol=2e-3)
    scores = _load(events["alignment_scores"])
    matrix = _load(events["alignment_matrix"]).tensors["matrix"]
    torch.testing.assert_close(
        torch.tensor(scores["score"].to_numpy()).double(), matrix.mean(dim=1).double(), rtol=1e-4, atol=1e-7
    )


def test_checkpoints_load_and_benchmark_reports_every_policy(materialized):
    home, events, _ = materialized
    for name in ["pretrained_policy", "warmup_policy", "trained_policy"]:
        checkpoint = _load(events[name])
        assert isinstance(checkpoint, Checkpoint)
        assert tree_digest(checkpoint.path) == events[name].metadata["sha256"].value
        model, tokenizer = load_policy(checkpoint.path)
        assert model.config.head_dim == 64 and tokenizer.eos_token_id is not None
        assert (checkpoint.path / "training_log.parquet").exists()
    warm = torch.load  # noqa: F841 - nothing in the artifact store may need torch.load: no pickle files at all
    assert not [p for p in (home / "artifacts").rglob("*") if p.suffix in {".pt", ".pkl", ".bin", ".pickle"}]
    results = _load(events["benchmark_results"])
    n = SMOKE["ops"]["benchmark_results"]["config"]["sampled_n"]
    greedy, sampled = results.filter(pl.col("decoding") == "greedy"), results.filter(pl.col("decoding") != "greedy")
    assert greedy["policy"].to_list() == sampled["policy"].to_list() == ["pretrained", "warmup", "trained"]
    assert set(results["template"]) == {"qa_2shot"} and sampled["decoding"][0] == f"sampled n={n} T=1.0 top_p=1.0"
    assert ((results["accuracy"] >= 0) & (results["accuracy"] <= 1)).all()
    assert (greedy["num_correct"] == (greedy["accuracy"] * greedy["num_problems"]).round()).all()
    assert (sampled["num_correct"] == (sampled["accuracy"] * sampled["num_problems"] * n).round()).all()
    stored = (
        duckdb.connect(str(home / "results.duckdb"), read_only=True)
        .execute("SELECT policy, accuracy FROM benchmark_results")
        .fetchall()
    )
    assert sorted(stored) == sorted(zip(results["policy"], results["accuracy"]))
    # metadata floats are rounded for people (4 significant digits); the table keeps full precision
    assert events["benchmark_results"].metadata["accuracy_trained"].value == pytest.approx(
        greedy["accuracy"][2], rel=1e-3
    )


def test_rematerializing_gives_identical_data_versions(materialized, tmp_path):
    """Deterministic CPU steps: a second run of the data, rollout, gradient and selection assets (same config and
    seed) reproduces their content hashes, so the selected subset is identical."""
    _, events, instance = materialized
    from learnalign_pipeline.definitions import defs

    definitions = defs()
    selection = [
        "benchmark_problems",
        "raw_problems",
        "rollouts",
        "success_rates",
        "projected_gradients",
        "learnability_scores",
        "alignment_scores",
        "alignment_matrix",
        "selected_subset",
    ]
    job = definitions.resolve_job_def("learnalign_job")
    result = job.execute_in_process(
        run_config=SMOKE, instance=instance, asset_selection=[dg.AssetKey(k) for k in selection]
    )
    assert result.success
    for key in selection:
        again = instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization
        assert again.tags["dagster/data_version"] == events[key].tags["dagster/data_version"], key


def test_comparison_job_selects_trains_and_reports_every_method(materialized):
    """The comparison job on the smoke graph: rollouts and gradients are reused (not rematerialized), every
    (method, budget, seed) gets the same steps, results land in DuckDB, the report has the table and a PNG."""
    home, events, instance = materialized
    from learnalign_pipeline.definitions import defs

    job = defs().resolve_job_def("selection_comparison_job")
    assert "rollouts" not in {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    reused = ["rollouts", "success_rates", "projected_gradients"]  # computed by learnalign_job, only read here
    count = lambda name: len(instance.fetch_materializations(dg.AssetKey(name), limit=100).records)  # noqa: E731
    before = {name: count(name) for name in reused}
    assert job.execute_in_process(run_config=SMOKE_COMPARISON, instance=instance).success
    latest = lambda name: instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization  # noqa: E731
    assert {name: count(name) for name in reused} == before
    subsets = _load(latest("comparison_subsets"))
    pool = _load(events["raw_problems"])
    assert subsets.filter(pl.col("method") == "full_data")["problem_id"].n_unique() == pool.height
    sizes = subsets.filter(pl.col("method") != "full_data").group_by("method", "budget", "seed").len()
    assert sizes["method"].n_unique() == 18
    controls = sizes.filter(~pl.col("method").is_in(list(LEARNABLE_ONLY)))
    assert (controls["len"] == controls["budget"]).all()  # the controls fill the budget from the whole pool
    assert (sizes["len"] <= sizes["budget"]).all()  # learnability methods: only learnable problems, maybe fewer
    learnable_only = subsets.filter(pl.col("method").is_in(list(LEARNABLE_ONLY - {"learnalign_no_warmup"})))
    assert ((learnable_only["success_rate"] > 0) & (learnable_only["success_rate"] < 1)).all()
    results = _load(latest("comparison_results"))
    runs = results.filter(pl.col("method").is_in(["learnalign", "gradalign", "limr", "full_data"]))
    assert runs.height == 4 * 2 * 2 and set(runs["steps"]) == {2}
    assert ((runs["accuracy"] >= 0) & (runs["accuracy"] <= 1)).all() and set(runs["num_problems"]) == {20}
    full = runs.filter(pl.col("method") == "full_data").sort("seed", "budget")
    assert (
        full["accuracy"].to_list()[0] == full["accuracy"].to_list()[1]
    )  # one full-data run per seed, shared by budgets
    stored = (
        duckdb.connect(str(home / "results.duckdb"), read_only=True)
        .execute("SELECT count(*) FROM selection_comparison")
        .fetchone()[0]
    )
    assert stored == results.height
    report = latest("comparison_report")
    assert (
        "| learnalign |" in report.metadata["table_a"].value
        and "data:image/png;base64," in report.metadata["plot"].value
    )
    assert Path(report.metadata["plot_path"].value).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curriculum_runs_two_rounds_with_distinct_checkpoints(materialized):
    _, events, instance = materialized
    from learnalign_pipeline.definitions import defs

    assert (
        defs()
        .resolve_job_def("gradalign_curriculum_job")
        .execute_in_process(run_config=SMOKE_CURRICULUM, instance=instance)
        .success
    )
    latest = lambda name: instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization  # noqa: E731
    selections = [_load(latest(f"curriculum_selection_{r}")) for r in (1, 2)]
    policies = [_load(latest(f"curriculum_policy_{r}")) for r in (1, 2)]
    digests = [tree_digest(p.path) for p in policies] + [events["warmup_policy"].metadata["sha256"].value]
    assert len(set(digests)) == 3  # each round's checkpoint differs from the last and from the start
    assert selections[0]["scored_with"][0] == _load(events["warmup_policy"]).path.name
    assert selections[1]["scored_with"][0] == policies[0].path.name  # round 2 scored with round 1's policy
    for s in selections:  # never more than the candidates with a gradient, each of them with one
        assert int(s["selected"].sum()) == min(8, int(s["with_gradient"][0])) > 0
        assert s.filter(pl.col("selected"))["has_gradient"].all()
    first_chunks = [set(s.filter(pl.col("chunk") == s["chunk"][0])["problem_id"]) for s in selections]
    assert not first_chunks[0] & first_chunks[1]  # each round starts from a new chunk
    trained_on = json.loads((policies[1].path / "training_config.json").read_text())["subset_ids"]
    assert sorted(trained_on) == sorted(selections[1].filter(pl.col("selected"))["problem_id"].to_list())
