"""A real model can stand in for the built-in policy: `model_path` publishes a versioned copy of the checkpoint."""

import dagster as dg
import pytest

from learnalign_pipeline.core.policy.model import load_policy, save_policy
from learnalign_pipeline.core.storage.artifacts import read_artifact
from learnalign_pipeline.core.storage.hashing import tree_digest


def test_pretrained_policy_from_a_checkpoint_path(model, tokenizer, tmp_path, monkeypatch):
    save_policy(model, tokenizer, tmp_path / "external")
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path / "home"))
    from learnalign_pipeline.definitions import defs

    run_config = {"ops": {"pretrained_policy": {"config": {"model_path": str(tmp_path / "external")}}}}
    with dg.instance_for_test() as instance:
        job = defs().resolve_job_def("learnalign_job")
        keys = [dg.AssetKey("benchmark_problems"), dg.AssetKey("pretrained_policy")]
        assert job.execute_in_process(run_config=run_config, instance=instance, asset_selection=keys).success
        event = instance.get_latest_materialization_event(dg.AssetKey("pretrained_policy")).asset_materialization
    checkpoint = read_artifact(event.metadata["path"].value, event.metadata["sha256"].value)
    assert (tmp_path / "external" / "config.json").exists()  # the user's directory is copied, never moved
    loaded, _ = load_policy(checkpoint.path)
    assert all((a == b).all() for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert tree_digest(checkpoint.path) == event.metadata["sha256"].value


def test_missing_model_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path / "home"))
    from learnalign_pipeline.definitions import defs

    run_config = {"ops": {"pretrained_policy": {"config": {"model_path": str(tmp_path / "nowhere")}}}}
    with dg.instance_for_test() as instance:
        job = defs().resolve_job_def("learnalign_job")
        keys = [dg.AssetKey("benchmark_problems"), dg.AssetKey("pretrained_policy")]
        with pytest.raises(Exception, match="nowhere"):
            job.execute_in_process(run_config=run_config, instance=instance, asset_selection=keys)


def test_one_reference_setting_names_the_kl_reference_of_training_and_features(tmp_path):
    from learnalign_pipeline.core.storage.artifacts import Checkpoint
    from learnalign_pipeline.lib.resources import GRPOLoss
    from learnalign_pipeline.lib.training import reference_checkpoint

    start, base = Checkpoint(tmp_path / "start"), Checkpoint(tmp_path / "base")
    assert reference_checkpoint(GRPOLoss(), start, base) == start  # default: the stage's start, as TRL does
    assert reference_checkpoint(GRPOLoss(reference="base"), start, base) == base
