"""Materialize the whole graph on the smoke preset against a real (on-disk, SQLite) Dagster instance and
check every artifact it wrote."""

import json
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
import torch

from learnalign_pipeline.core.artifacts import Checkpoint, TensorBundle, read_artifact, tree_digest
from learnalign_pipeline.core.policy import load_policy
from learnalign_pipeline.core.schema import PROBLEM_SCHEMA
from learnalign_pipeline.defs.presets import SMOKE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    home = tmp_path_factory.mktemp("learnalign_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNALIGN_HOME", str(home))
        from learnalign_pipeline.definitions import defs

        definitions = defs()
        with dg.instance_for_test() as instance:
            result = definitions.resolve_job_def("learnalign_job").execute_in_process(run_config=SMOKE, instance=instance)
            assert result.success
            events = {
                key.to_user_string(): instance.get_latest_materialization_event(key).asset_materialization
                for key in definitions.resolve_asset_graph().materializable_asset_keys  # observable sources are observed, not materialized
            }
            yield home, events, instance


def _load(event):
    return read_artifact(Path(event.metadata["path"].value), event.metadata["sha256"].value)


def test_every_asset_was_materialized_with_a_verified_artifact(materialized):
    home, events, _ = materialized
    assert set(events) == {
        "benchmark_problems", "benchmark_rejected_problems", "raw_problems", "rejected_problems", "pretrained_policy", "warmup_policy", "rollouts", "success_rates",
        "projected_gradients", "learnability_scores", "alignment_scores", "alignment_matrix", "selected_subset",
        "trained_policy", "benchmark_results",
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
    assert subset.height == SMOKE["ops"]["selected_subset"]["config"]["budget"]
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
    torch.testing.assert_close(torch.tensor(scores["score"].to_numpy()).double(), matrix.mean(dim=1).double(), rtol=1e-4, atol=1e-7)


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
    assert set(results["template"]) == {"qa_2shot"} and sampled["decoding"][0] == f"sampled n={n} T=0.6 top_p=0.95"
    assert ((results["accuracy"] >= 0) & (results["accuracy"] <= 1)).all()
    assert (greedy["num_correct"] == (greedy["accuracy"] * greedy["num_problems"]).round()).all()
    assert (sampled["num_correct"] == (sampled["accuracy"] * sampled["num_problems"] * n).round()).all()
    stored = duckdb.connect(str(home / "results.duckdb"), read_only=True).execute("SELECT policy, accuracy FROM benchmark_results").fetchall()
    assert sorted(stored) == sorted(zip(results["policy"], results["accuracy"]))
    assert events["benchmark_results"].metadata["accuracy_trained"].value == greedy["accuracy"][2]


def test_rematerializing_gives_identical_data_versions(materialized, tmp_path):
    """Deterministic CPU steps: a second run of the data, rollout, gradient and selection assets (same config and
    seed) reproduces their content hashes, so the selected subset is identical."""
    _, events, instance = materialized
    from learnalign_pipeline.definitions import defs

    definitions = defs()
    selection = [
        "benchmark_problems", "raw_problems", "rollouts", "success_rates", "projected_gradients",
        "learnability_scores", "alignment_scores", "alignment_matrix", "selected_subset",
    ]
    job = definitions.resolve_job_def("learnalign_job")
    result = job.execute_in_process(run_config=SMOKE, instance=instance, asset_selection=[dg.AssetKey(k) for k in selection])
    assert result.success
    for key in selection:
        again = instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization
        assert again.tags["dagster/data_version"] == events[key].tags["dagster/data_version"], key
