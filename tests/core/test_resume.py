"""Resumable GRPO training on TRL checkpoints: stopped after k steps and resumed, training ends with the same bytes
as an uninterrupted run; a checkpoint is used only when its seal matches (one killed mid-save, or changed since,
is skipped); its files hold no whole-object pickle and resume reads them weights-only; one training state is kept,
the older one deleted only once the newer one is sealed, and the last step writes none. A SIGKILLed stage resuming
through Dagster: tests/integration/test_crash_and_concurrency.py."""

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import ParityReward
from transformers import TrainerState

from learnalign_pipeline.core.compute import ComputeConfig
from learnalign_pipeline.core.policy.model import save_policy
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.training import trl_engine
from learnalign_pipeline.core.training.config import GRPOConfig, TrainerConfig
from learnalign_pipeline.core.training.trl_engine import SEAL, TRLRun, newest_sealed_checkpoint, train_run

STOP_AT = 3  # stopped while logging step 3: checkpoint-2 is the newest sealed one
GRPO = GRPOConfig(steps=5, problems_per_step=3, num_samples=4, learning_rate=1e-2, seed=3, checkpoint_every=2)


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def inputs(tokenizer, problems, tmp_path_factory):
    from learnalign_pipeline.core.policy.model import TinyPolicyConfig, build_model

    root = tmp_path_factory.mktemp("resume")
    model = build_model(
        TinyPolicyConfig(vocab_size=320, hidden_size=128, intermediate_size=128, num_layers=2), tokenizer, seed=0
    )
    save_policy(model, tokenizer, root / "start")
    problems.write_parquet(root / "problems.parquet")
    return root


def _train(
    inputs: Path, name: str, stop_at: int | None = None, warnings=None, attempt: str = "0"
) -> tuple[dict, Path, dict]:
    run = TRLRun(
        attempt=attempt,
        start=str(inputs / "start"),
        problems=str(inputs / "problems.parquet"),
        output=str(inputs / name / "out"),
        state_dir=str(inputs / name / "state"),
        grpo=dataclasses.asdict(GRPO),
        task=dataclasses.asdict(TaskConfig(max_new_tokens=6)),
    )

    def report(record):
        if stop_at is not None and record["step"] + 1 == stop_at:
            raise Stop  # as if the process died right after logging this step

    summary = train_run(
        run,
        TrainerConfig(),
        ComputeConfig(device="cpu"),
        report,
        warn=[].append if warnings is None else warnings.append,
        verifier=ParityReward(),
    )
    return summary, Path(run.state_dir), load_file(Path(run.output) / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(inputs):
    return _train(inputs, "uninterrupted")


@pytest.fixture(scope="module")
def stopped(inputs):
    """The checkpoints left by a run that stopped at step STOP_AT (checkpoint every 2)."""
    with pytest.raises(Stop):
        _train(inputs, "stopped", stop_at=STOP_AT)
    return inputs / "stopped" / "state"


def test_training_is_deterministic_on_cpu(inputs, uninterrupted):
    _, _, weights = uninterrupted
    _, _, again = _train(inputs, "again")
    start = load_file(inputs / "start" / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert any(not torch.equal(weights[k], start[k]) for k in weights)  # it did train


def test_stopped_run_left_one_sealed_checkpoint_readable_weights_only(stopped):
    from transformers.trainer_pt_utils import safe_globals

    checkpoints = stopped / "0"  # the attempt's directory (TRLRun.attempt)
    assert newest_sealed_checkpoint(stopped) == checkpoints / "checkpoint-2"
    files = {p.name for p in (checkpoints / "checkpoint-2").iterdir()}
    assert {SEAL, "model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"} <= files
    assert "training_args.bin" not in files  # the one whole-object pickle HF writes (and never reads) is removed
    with safe_globals():  # numpy arrays in the RNG state: the allowlist transformers itself uses
        for path in (checkpoints / "checkpoint-2").glob("*.p*"):
            assert torch.load(path, weights_only=True) is not None, path


def test_resumed_training_equals_uninterrupted(inputs, uninterrupted, stopped):
    shutil.copytree(stopped, inputs / "resumed" / "state")
    summary, _, weights = _train(inputs, "resumed")
    assert summary["resumed_from"] == "0/checkpoint-2"
    _, _, expected = uninterrupted
    for name, value in expected.items():
        assert torch.equal(weights[name], value), name  # bitwise
    assert summary["steps"] == GRPO.steps  # the log before the checkpoint came back with it


@pytest.mark.parametrize("damage", ["changed", "unsealed"])
def test_a_changed_or_unsealed_checkpoint_is_skipped_and_training_starts_over(inputs, uninterrupted, stopped, damage):
    name = f"damaged_{damage}"
    checkpoint = shutil.copytree(stopped, inputs / name / "state") / "0" / "checkpoint-2"
    if damage == "changed":
        data = bytearray((checkpoint / "rng_state.pth").read_bytes())
        data[-30] ^= 0xFF
        (checkpoint / "rng_state.pth").write_bytes(bytes(data))
    else:
        (checkpoint / SEAL).unlink()  # as if killed while the checkpoint was being written
    warnings = []
    summary, _, weights = _train(inputs, name, warnings=warnings)
    assert summary["resumed_from"] is None and "skipping checkpoint" in warnings[0]
    _, _, expected = uninterrupted
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_a_finished_run_keeps_one_training_state_and_writes_none_at_its_last_step(uninterrupted):
    _, state, _ = uninterrupted
    # states at steps 2 and 4: 2 deleted once 4 was sealed; step 5 is the last, its policy is published instead
    assert [p.name for p in state.glob("*/checkpoint-*")] == ["checkpoint-4"]
    assert newest_sealed_checkpoint(state) == state / "0" / "checkpoint-4"


def test_killed_while_sealing_the_newest_state_resumes_exactly_from_the_previous_one(
    inputs, uninterrupted, monkeypatch
):
    hash_file = trl_engine.sha256_file

    def dies_while_sealing_checkpoint_4(path):
        if Path(path).parent.name == "checkpoint-4":
            raise Stop  # as if the process died while the seal of checkpoint-4 was being computed
        return hash_file(path)

    monkeypatch.setattr(trl_engine, "sha256_file", dies_while_sealing_checkpoint_4)
    with pytest.raises(Stop):
        _train(inputs, "killed_sealing")
    monkeypatch.undo()
    state = inputs / "killed_sealing" / "state"
    assert newest_sealed_checkpoint(state) == state / "0" / "checkpoint-2"  # kept until a newer one is sealed
    summary, _, weights = _train(inputs, "killed_sealing")
    assert summary["resumed_from"] == "0/checkpoint-2"
    _, _, expected = uninterrupted
    assert all(torch.equal(weights[k], expected[k]) for k in expected)  # bitwise


def test_a_state_deleted_by_its_attempt_during_another_attempts_resume_still_resumes_exactly(
    inputs, uninterrupted, stopped, monkeypatch
):
    """Two runs of a stage at once: attempt 1 resumes from attempt 0's state while attempt 0, having sealed a newer
    one, deletes it. HF reads the state in several passes and silently starts over (step 0, fresh optimizer, the
    loaded weights) when trainer_state.json or the optimizer is gone by its second pass."""
    state = shutil.copytree(stopped, inputs / "deleted_meanwhile" / "state")
    load_state = TrainerState.load_from_json

    def deleted_after_the_first_read(path):
        loaded = load_state(path)
        shutil.rmtree(state / "0" / "checkpoint-2", ignore_errors=True)  # attempt 0 sealed a newer state
        return loaded

    monkeypatch.setattr(TrainerState, "load_from_json", deleted_after_the_first_read)
    summary, _, weights = _train(inputs, "deleted_meanwhile", attempt="1")
    assert summary["resumed_from"] == "0/checkpoint-2"
    _, _, expected = uninterrupted
    assert all(torch.equal(weights[k], expected[k]) for k in expected)  # bitwise
