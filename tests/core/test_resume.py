"""Resumable GRPO training: stopped after k steps and resumed, training ends with the same bytes as an
uninterrupted run; the saved state holds no pickle and a tampered state is not used."""

import copy
import json
import shutil

import pytest
import torch

from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.resume import ResumeDirectory
from learnalign_pipeline.core.training.trainer import train_grpo

STOP_AT = 2
CONFIG = GRPOConfig(
    steps=4,
    problems_per_step=3,
    num_samples=4,
    learning_rate=1e-2,  # large enough that every step moves the weights visibly
    seed=3,
    checkpoint_every=2,
)
TASK = TaskConfig(max_new_tokens=6)


class ParityReward:
    """Rewards completions of even length: an untrained policy earns it about half the time, so groups have
    reward variance and every step moves the weights."""

    name = "parity"

    def score_batch(self, completions, golds):
        return [float(len(c) % 2 == 0) for c in completions]


class Stop(Exception):
    pass


def _stop_after(k: int):
    def log(record):
        if record["step"] + 1 == k:
            raise Stop  # as if the process died right after step k's state was saved

    return log


def _train(start, tokenizer, problems, **kwargs):
    model = copy.deepcopy(start)
    history = train_grpo(model, tokenizer, problems, ParityReward(), CONFIG, TASK, **kwargs)
    return model, history


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _without_times(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module")
def start(tokenizer):
    from learnalign_pipeline.core.policy.model import TinyPolicyConfig, build_model

    return build_model(
        TinyPolicyConfig(vocab_size=320, hidden_size=128, intermediate_size=128, num_layers=2), tokenizer, seed=0
    ).eval()


@pytest.fixture(scope="module")
def uninterrupted(start, tokenizer, problems):
    return _train(start, tokenizer, problems)


@pytest.fixture(scope="module")
def stopped(start, tokenizer, problems, tmp_path_factory):
    """A resume directory left by a run that stopped after STOP_AT steps (checkpoint every 2)."""
    resume = ResumeDirectory(tmp_path_factory.mktemp("stopped") / "resume")
    with pytest.raises(Stop):
        _train(start, tokenizer, problems, resume=resume, log=_stop_after(STOP_AT))
    return resume.path


def test_training_is_deterministic_on_cpu(start, tokenizer, problems, uninterrupted):
    trained, history = uninterrupted
    again, again_history = _train(start, tokenizer, problems)
    assert _same_weights(again, trained) and _without_times(again_history) == _without_times(history)
    assert not _same_weights(start, trained)  # it did train


def test_stopped_run_left_one_verified_state_without_pickle(stopped):
    assert [p.name for p in stopped.iterdir()] == [f"step_{STOP_AT:06d}"]  # only the newest state is kept
    record = json.loads((stopped / f"step_{STOP_AT:06d}" / "state.json").read_text())
    assert record["step"] == STOP_AT and [r["step"] for r in record["history"]] == list(range(STOP_AT))
    assert {"optimizer.safetensors", "rng.safetensors", "model/model.safetensors", "model/config.json"} <= set(
        record["files"]
    )
    assert not [p for p in stopped.rglob("*") if p.suffix in {".pt", ".pkl", ".bin", ".pickle"}]


def test_resumed_training_equals_uninterrupted(start, tokenizer, problems, uninterrupted, stopped, tmp_path):
    resume = ResumeDirectory(shutil.copytree(stopped, tmp_path / "resume"))
    trained, history = _train(start, tokenizer, problems, resume=resume)
    assert resume.resumed_from_step == STOP_AT
    expected, expected_history = uninterrupted
    for (name, value), resumed in zip(expected.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(resumed, value), name  # bitwise
    assert _without_times(history) == _without_times(expected_history)


def test_tampered_state_is_skipped_and_training_starts_over(
    start, tokenizer, problems, uninterrupted, stopped, tmp_path
):
    path = shutil.copytree(stopped, tmp_path / "resume")
    rng = path / f"step_{STOP_AT:06d}" / "rng.safetensors"
    data = bytearray(rng.read_bytes())
    data[-1] ^= 0xFF
    rng.write_bytes(bytes(data))
    warnings = []
    resume = ResumeDirectory(path, warn=warnings.append)
    trained, _ = _train(start, tokenizer, problems, resume=resume)
    assert resume.resumed_from_step == 0 and "rng.safetensors does not match" in warnings[0]
    assert _same_weights(trained, uninterrupted[0])


def test_a_state_that_cannot_be_written_does_not_stop_training(start, tokenizer, problems, uninterrupted, tmp_path):
    (tmp_path / "blocked").write_text("a file where the resume directory's parent should be")
    warnings = []
    resume = ResumeDirectory(tmp_path / "blocked" / "resume", warn=warnings.append)
    trained, _ = _train(start, tokenizer, problems, resume=resume)
    assert len(warnings) == 1 and "could not save the training state after step 2" in warnings[0]
    assert _same_weights(trained, uninterrupted[0])
