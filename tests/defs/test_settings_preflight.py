"""`learnalign` checks a run config against the settings objects before it creates a run: bad values are listed
with the asset and the field, and nothing runs (Dagster alone would build a stage's config when that stage starts,
after every stage before it ran). Launched from the UI, the same values fail the step that owns them with the same
message (the run-config views validate like their settings objects)."""

import copy

import dagster as dg
import pytest

from learnalign_pipeline import cli
from learnalign_pipeline.defs.policy.assets import TrainingConfig
from learnalign_pipeline.presets import SMOKE


def test_cli_refuses_bad_settings_before_any_run_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cli.prepare_environment()
    config = copy.deepcopy(SMOKE)
    ops = config["ops"]
    ops["pretrained_policy"]["config"]["steps"] = 0
    ops["selected_subset"]["config"]["budget"] = 0
    ops["trained_policy"]["config"]["num_samples"] = 1
    ops["rollouts_and_success_rates"]["config"]["num_samples"] = 1
    config["resources"]["task"]["config"]["max_new_tokens"] = 0

    assert cli.run_job("learnalign_job", config) is False
    err = capsys.readouterr().err
    assert err.startswith("learnalign_job not started: the run config has values the pipeline refuses:")
    for line in [
        "ops.pretrained_policy.config: steps: must be >= 1 (got 0)",
        "ops.selected_subset.config: budget: must be >= 1 problem (got 0)",
        "ops.trained_policy.config: num_samples: GRPO scores each rollout against the others of its group",
        "ops.rollouts_and_success_rates.config: num_samples: learnability p(1 - p) needs >= 2 samples",
        "resources.task.config: max_new_tokens: must be >= 1",
    ]:
        assert line in err
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == []  # nothing ran, nothing was recorded


def test_a_run_config_view_refuses_what_its_settings_object_refuses():
    with pytest.raises(ValueError, match="steps: must be >= 1"):
        TrainingConfig(steps=0)
    assert TrainingConfig(steps=3).steps == 3
