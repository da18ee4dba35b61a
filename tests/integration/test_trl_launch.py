"""GRPO launched the Dagster way: an asset trains through Dagster Pipes, with `accelerate launch` starting 2 gloo
processes on CPU, and publishes a checkpoint that equals (allclose) a 1-process run of the same global batch; the
steps' log lines, per-step metrics (reward, loss, KL, zero-variance groups) and the checkpoint come back as the
asset's events and metadata, on a real Dagster instance."""

from pathlib import Path

import dagster as dg
import pytest
from safetensors.torch import load_file
from testing_utils import grpo_stage_resources

from learnalign_pipeline.core.data.arithmetic import arithmetic_frame
from learnalign_pipeline.core.data.noise import mark_noisy
from learnalign_pipeline.core.policy.model import TinyPolicyConfig, build_model, save_policy
from learnalign_pipeline.core.storage.artifacts import Checkpoint
from learnalign_pipeline.core.task.prompts import render
from learnalign_pipeline.core.training.config import PretrainConfig
from learnalign_pipeline.core.training.sft import supervised_pretrain
from learnalign_pipeline.lib.resources import ArtifactStore, ComputeSettings, GRPOLoss, TaskSettings, TrainerSettings
from learnalign_pipeline.lib.training import GRPOStageConfig, grpo_stage

pytestmark = pytest.mark.slow

PROBLEMS = arithmetic_frame(8, seed=7, split="pool")
LEARNING_RATE = 1e-2


@pytest.fixture(scope="module")
def start(tokenizer, tmp_path_factory) -> Path:
    """A tiny policy that has half-memorized the 8 problems' worked solutions: sampled at T=1 it solves some of
    them some of the time, so GRPO groups have reward variance and the weights move."""
    model = build_model(
        TinyPolicyConfig(
            vocab_size=320, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=1, num_kv_heads=1
        ),
        tokenizer,
        seed=0,
    )
    prompts = [render("qa", p) for p in PROBLEMS["prompt"]]
    solutions = [" " + s for s in PROBLEMS["solution"]]
    supervised_pretrain(
        model, tokenizer, prompts, solutions, PretrainConfig(steps=45, batch_size=8, learning_rate=1e-2, warmup_steps=5)
    )
    path = tmp_path_factory.mktemp("start") / "policy"
    save_policy(model, tokenizer, path)
    return path


def _train(start: Path, root: Path, processes: int, problems=PROBLEMS) -> tuple[dg.AssetMaterialization, list[str]]:
    @dg.asset(name="tiny_grpo_policy")
    def tiny_grpo_policy(
        context: dg.AssetExecutionContext,
        task: TaskSettings,
        grpo_loss: GRPOLoss,
        trainer: TrainerSettings,
        compute: ComputeSettings,
        store: ArtifactStore,
    ) -> dg.Output[Checkpoint]:
        config = GRPOStageConfig(
            steps=3, problems_per_step=4, num_samples=4, learning_rate=LEARNING_RATE, checkpoint_every=0
        )
        policy = Checkpoint(start)
        return grpo_stage(context, config, task, grpo_loss, trainer, compute, store, policy, policy, problems)

    artifacts = str(root / "artifacts")
    (root / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "instance")) as instance:
        result = dg.materialize(
            [tiny_grpo_policy],
            instance=instance,
            resources=grpo_stage_resources(artifacts, max_new_tokens=16, processes=processes),
        )
        assert result.success
        materialization = instance.get_latest_materialization_event(
            dg.AssetKey("tiny_grpo_policy")
        ).asset_materialization
        logs = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    return materialization, logs


@pytest.fixture(scope="module")
def runs(start, tmp_path_factory):
    return {n: _train(start, tmp_path_factory.mktemp(f"processes_{n}"), n) for n in (1, 2)}


def test_two_gloo_processes_publish_the_checkpoint_of_one_process(start, runs):
    # Same rollouts, losses, KL and gradient norms at every step: the all-reduced gradient is the 1-process one.
    logs = {n: [r.data for r in m.metadata["training_log"].records] for n, (m, _) in runs.items()}
    assert len(logs[1]) == len(logs[2]) == 3
    for one, two in zip(logs[1], logs[2]):
        assert one.keys() == two.keys()
        for key in one:
            assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-6), (one["step"], key)

    weights = {n: load_file(Path(m.metadata["path"].value) / "model.safetensors") for n, (m, _) in runs.items()}
    initial = load_file(start / "model.safetensors")
    moved = max(float((weights[1][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 100 * 1e-4  # the weights moved far more than the tolerances below
    # AdamW divides each gradient entry by its own running RMS (+ eps 1e-8): on an entry whose gradient is about
    # eps, summation-order noise from the all-reduce changes that step's update by up to ~lr (Adam's step is bounded
    # by a few lr). So: almost every entry agrees to lr/100, and none by more than lr per step. Measured on a
    # 2-core AMD EPYC: 4 of 106,000 entries beyond lr/100, the largest lr/26; another CPU had none beyond lr/100.
    steps = len(logs[1])
    beyond, total = 0, 0
    for name, value in weights[1].items():
        difference = (weights[2][name] - value).abs()
        assert float(difference.max()) <= steps * LEARNING_RATE, name
        beyond += int((difference > 1e-2 * LEARNING_RATE).sum())
        total += difference.numel()
    assert beyond <= total * 1e-4, f"{beyond} of {total} weights differ by more than lr/100"
    assert {n: m.metadata["training_processes"].value for n, (m, _) in runs.items()} == {1: 1, 2: 2}


def test_steps_and_checkpoint_come_back_as_events_and_metadata(runs):
    materialization, logs = runs[2]
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert 0 < metadata["reward_first_step"] < 1  # groups with reward variance: a real gradient
    assert metadata["kl_last_step"] > 0 and 0 <= metadata["frac_reward_zero_std_mean"] < 1
    assert metadata["training_steps"] == 3 and "training_curves" in metadata  # the curves as an image
    assert [r.data["step"] for r in materialization.metadata["training_log"].records] == [0, 1, 2]
    assert Path(metadata["path"]).is_dir() and metadata["sha256"]
    assert any("external process successfully opened dagster pipes" in line for line in logs)
    steps = [line for line in logs if "GRPO step" in line]
    assert (
        steps and steps[-1].startswith("run 1/1 GRPO step 3/3: ") and "kl=" in steps[-1] and "reward_mean=" in steps[-1]
    )
    assert runs[1][0].metadata["reward_first_step"].value == metadata["reward_first_step"]  # same rollouts


def test_the_launched_training_rewards_coin_flip_problems_with_coins(start, runs, tmp_path):
    """The Pipes launch decides rewards by the same rule as everything else: on the same 8 problems with every reward
    a coin, the launched run's reward trace is no longer the clean run's, and its mean is about 0.5."""
    coins = mark_noisy(PROBLEMS, 1.0, "coin_flip", seed=0)
    materialization, _ = _train(start, tmp_path, 1, coins)
    rewards = [r.data["reward_mean"] for r in materialization.metadata["training_log"].records]
    clean = [r.data["reward_mean"] for r in runs[1][0].metadata["training_log"].records]
    assert rewards != clean
    assert abs(sum(rewards) / len(rewards) - 0.5) < 0.2  # 3 steps x 4 problems x 4 rollouts: SE 0.07
