"""`learnalign` checks a run config against the settings objects before it creates a run: bad values are listed
with the asset and the field, and nothing runs (Dagster alone would build a stage's config when that stage starts,
after every stage before it ran). Launched from the UI, the same values fail the step that owns them with the same
message (the run-config views validate like their settings objects)."""

import copy

import dagster as dg
import pytest
import torch

from learnalign_pipeline import cli
from learnalign_pipeline.core.compute import ComputeConfig
from learnalign_pipeline.core.training.config import TrainerConfig
from learnalign_pipeline.defs.policy.assets import TrainingConfig
from learnalign_pipeline.lib import sharded
from learnalign_pipeline.lib.config import SettingsError, check_run_config
from learnalign_pipeline.presets import GSM8K_GPU, SMOKE


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


def test_a_run_started_outside_the_cli_checks_its_settings_before_the_first_step(tmp_path, monkeypatch):
    """What the launchpad, automation and `dg launch` do: execute the job without `learnalign`. The executor checks
    the run config at run start (issue 25: `steps: 0` let every stage before training run first; `inf` passed)."""
    from learnalign_pipeline.definitions import reconstructable_job

    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cli.prepare_environment()
    config = {
        "execution": {"config": {"in_process": {}}},
        "ops": {
            "benchmark_problems": SMOKE["ops"]["benchmark_problems"],
            "trained_policy": {"config": {"steps": 0}},
        },
        "resources": {"task": {"config": {"verifier_timeout_s": float("inf")}}},
    }
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            reconstructable_job("learnalign_job"),
            instance=instance,
            run_config=config,
            asset_selection=[dg.AssetKey("benchmark_problems"), dg.AssetKey("trained_policy")],
            raise_on_error=False,
        )
        assert not result.success
        events = instance.all_logs(result.run_id)
    assert not [e for e in events if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_START]
    failures = [e.dagster_event.event_specific_data for e in events if e.dagster_event and e.dagster_event.is_failure]
    failure = "\n".join(data.error.message for data in failures if getattr(data, "error", None))
    assert "ops.trained_policy.config: steps: must be >= 1 (got 0)" in failure
    assert "resources.task.config: verifier_timeout_s: must be a finite number (got inf)" in failure


def test_a_training_set_smaller_than_one_step_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    """Budget 1 with 8 problems per step used to run every stage, then crash with IndexError at history[0]."""
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cli.prepare_environment()
    config = copy.deepcopy(SMOKE)
    config["ops"]["selected_subset"]["config"]["budget"] = 1
    config["ops"]["warmup_policy"]["config"]["subset_size"] = 4
    assert cli.run_job("learnalign_job", config) is False
    err = capsys.readouterr().err
    assert (
        "ops.trained_policy.config: problems_per_step: selected_subset.budget = 1 problems cannot fill one step of 8"
        in err
    )
    assert (
        "ops.warmup_policy.config: problems_per_step: warmup_policy.subset_size = 4 problems cannot fill one step of 8"
        in err
    )
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == []


def _gpus(monkeypatch, count: int) -> None:
    """Simulate a machine with `count` visible GPUs (what the device preflight reads)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def _refusals(config: dict) -> str:
    from learnalign_pipeline.definitions import job_named

    try:
        check_run_config(job_named("learnalign_job"), config)
    except SettingsError as error:
        return str(error)
    return ""


def test_more_training_processes_than_gpus_is_refused_before_the_run(monkeypatch):
    """`processes: 8` on a one-GPU machine would put eight ranks on cuda:0 and die at warm-up, after the data
    steps; the preflight names the field instead, and the preset's default (0 = one per GPU) passes."""
    _gpus(monkeypatch, 1)
    monkeypatch.setattr(sharded, "NUM_SHARDS", 1)  # the default on one GPU (read when the code location loads)
    config = copy.deepcopy(GSM8K_GPU)
    config["resources"]["trainer"]["config"]["processes"] = 8
    assert "resources.trainer.config: processes: 8 training processes but 1 visible GPU(s)" in _refusals(config)
    assert _refusals(copy.deepcopy(GSM8K_GPU)) == ""
    assert TrainerConfig().process_count() == 1
    _gpus(monkeypatch, 8)
    assert _refusals(config) == "" and TrainerConfig().process_count() == 8


def test_engines_and_shards_beyond_the_gpus_are_refused_before_the_run(monkeypatch):
    _gpus(monkeypatch, 2)
    config = copy.deepcopy(GSM8K_GPU)
    config["resources"]["generator"]["config"]["tensor_parallel_size"] = 4
    config["resources"]["compute"] = {"config": {"device": "cuda:2"}}
    refused = _refusals(config)
    assert "resources.generator.config: tensor_parallel_size: 4 but 2 visible GPU(s)" in refused
    assert "resources.compute.config: device: 'cuda:2' but only 2 GPU(s) are visible" in refused
    monkeypatch.setattr(sharded, "NUM_SHARDS", 4)
    assert "environment: LEARNALIGN_NUM_SHARDS: 4 shard steps" in _refusals(copy.deepcopy(GSM8K_GPU))


def test_vllm_rollouts_in_training_are_refused_on_the_cpu():
    """TRL's colocated vLLM needs a GPU: on this machine the GPU preset's trainer is refused, naming the field."""
    assert not torch.cuda.is_available()
    config = copy.deepcopy(SMOKE)
    config["resources"]["trainer"] = {"config": {"rollouts": "vllm"}}
    assert "resources.trainer.config: rollouts: 'vllm' generates with vLLM colocated" in _refusals(config)


def test_an_explicit_gpu_is_the_training_processes_only_gpu(monkeypatch):
    """`compute.device: cuda:1` trains on GPU 1: the launched process sees only it (as its cuda:0)."""
    _gpus(monkeypatch, 2)
    launched, env = ComputeConfig(device="cuda:1").launched(1)
    assert (launched.device, env) == ("cuda", {"CUDA_VISIBLE_DEVICES": "1"})
    assert ComputeConfig().launched(2) == (ComputeConfig(), {})
