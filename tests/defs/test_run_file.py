"""Run settings from a file: `learnalign <command> --config run.yaml` merges the user's YAML over the preset and is
checked before the run by the settings objects' bounds; a preset that trains the user's model takes its path from
the file or LEARNALIGN_MODEL_PATH, and a missing one is refused naming the setting."""

import dagster as dg
import pytest
import yaml

from learnalign_pipeline import cli
from learnalign_pipeline.lib.config import SettingsError, check_run_config
from learnalign_pipeline.presets import MODEL_PATH_ENV, SMOKE, RunFileError, run_config


def write(path, values) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_a_run_file_changes_only_what_it_names(tmp_path):
    file = write(tmp_path / "run.yaml", {"ops": {"selected_subset": {"config": {"budget": 12}}}})
    config = run_config("smoke", file, environ={})
    assert config["ops"]["selected_subset"]["config"] == {"budget": 12}
    assert config["ops"]["trained_policy"] == SMOKE["ops"]["trained_policy"]  # the preset's other settings stay
    assert config["resources"] == SMOKE["resources"]
    assert SMOKE["ops"]["selected_subset"]["config"]["budget"] == 16  # the preset itself is not edited


def test_a_run_file_is_checked_before_any_run_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    file = write(
        tmp_path / "run.yaml",
        {
            "ops": {"selected_subset": {"config": {"budget": 0}}},
            "resources": {"task": {"config": {"max_new_tokens": 0}}},
        },
    )
    assert cli.main(["demo", "--preset", "smoke", "--config", file]) == 1
    err = capsys.readouterr().err
    assert "ops.selected_subset.config: budget: must be >= 1 problem (got 0)" in err
    assert "resources.task.config: max_new_tokens: must be >= 1" in err
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == []


@pytest.mark.parametrize(
    "content, message",
    [
        ("- a\n- b\n", "must be a mapping"),
        ("opps: {}\n", "unknown top-level keys ['opps']"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_a_malformed_run_file_is_refused_with_what_to_fix(tmp_path, content, message):
    (tmp_path / "run.yaml").write_text(content)
    with pytest.raises(RunFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_config("smoke", tmp_path / "run.yaml", environ={})


def test_the_gpu_preset_takes_the_model_path_from_the_file_or_the_environment(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(RunFileError, match=rf"ops\.pretrained_policy\.config\.model_path is not set.*{MODEL_PATH_ENV}"):
        run_config("gsm8k_gpu", environ={})
    from_env = run_config("gsm8k_gpu", environ={MODEL_PATH_ENV: str(model)})
    assert from_env["ops"]["pretrained_policy"]["config"]["model_path"] == str(model)
    file = write(tmp_path / "run.yaml", {"ops": {"pretrained_policy": {"config": {"model_path": "/from/file"}}}})
    from_file = run_config("gsm8k_gpu", file, environ={MODEL_PATH_ENV: str(model)})
    assert from_file["ops"]["pretrained_policy"]["config"]["model_path"] == "/from/file"  # the file wins


def test_a_model_path_that_does_not_exist_is_refused_before_the_run(tmp_path):
    from learnalign_pipeline.definitions import job_named

    config = run_config("gsm8k_gpu", environ={MODEL_PATH_ENV: str(tmp_path / "nowhere")})
    with pytest.raises(SettingsError, match=r"ops\.pretrained_policy\.config: model_path: no save_pretrained"):
        check_run_config(job_named("learnalign_job"), config)


def test_the_cli_names_the_missing_setting(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv(MODEL_PATH_ENV, raising=False)
    assert cli.main(["demo", "--preset", "gsm8k_gpu"]) == 2
    assert "ops.pretrained_policy.config.model_path is not set" in capsys.readouterr().err


def test_the_smollm2_preset_reads_the_fetched_file_and_passes_the_settings_checks(tmp_path, monkeypatch):
    from learnalign_pipeline.definitions import job_named
    from learnalign_pipeline.presets import SMOLLM2_FILE

    monkeypatch.setenv("LEARNALIGN_MODELS", str(tmp_path))
    with pytest.raises(
        RunFileError, match=r"does not exist: fetch it with `\.venv/bin/python scripts/fetch_smollm2\.py`"
    ):
        run_config("smollm2", environ={})
    (tmp_path / SMOLLM2_FILE).write_bytes(b"GGUF")
    config = run_config("smollm2", environ={})
    assert config["ops"]["pretrained_policy"]["config"]["model_path"] == str(tmp_path / SMOLLM2_FILE)
    check_run_config(job_named("learnalign_job"), config)  # every value within the settings' bounds
