"""A GRPO stage never trains nothing silently (issue 25), through `grpo_stage` and TRL on a real (untrained) policy:

- every group with equal rewards (an untrained policy never answers right: reward 0 everywhere) fails a training
  stage with the counts; the warm-up (`on_no_signal: warn`, its default) is published, marked in its metadata and its summary
  (the console line), where it used to leave the weights bitwise equal without a word;
- a training set smaller than one step of problems_per_step is refused before training is launched (it used to
  train 0 steps and crash with IndexError at history[0] after every upstream stage ran).
"""

from pathlib import Path

import dagster as dg
from testing_utils import grpo_stage_resources

from learnalign_pipeline.core.policy.model import save_policy
from learnalign_pipeline.core.storage.artifacts import Checkpoint
from learnalign_pipeline.lib.resources import ArtifactStore, ComputeSettings, GRPOLoss, TaskSettings, TrainerSettings
from learnalign_pipeline.lib.training import GRPOStageConfig, grpo_stage


def _train(root: Path, start: Path, problems, no_signal: str, **grpo):
    @dg.asset(name="policy_under_test")
    def policy_under_test(
        context: dg.AssetExecutionContext,
        task: TaskSettings,
        grpo_loss: GRPOLoss,
        trainer: TrainerSettings,
        compute: ComputeSettings,
        store: ArtifactStore,
    ) -> dg.Output[Checkpoint]:
        settings = {"steps": 2, "problems_per_step": 4, "num_samples": 2, "checkpoint_every": 0, **grpo}
        if no_signal != "fail":  # "fail" is the default
            settings["on_no_signal"] = no_signal
        policy = Checkpoint(start)
        return grpo_stage(
            context, GRPOStageConfig(**settings), task, grpo_loss, trainer, compute, store, policy, policy, problems
        )  # fmt: skip

    artifacts = str(root / "artifacts")
    (root / "instance").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(root / "instance")) as instance:
        result = dg.materialize(
            [policy_under_test],
            instance=instance,
            resources=grpo_stage_resources(artifacts, max_new_tokens=8),
            raise_on_error=False,
        )
        if result.success:
            [materialization] = result.asset_materializations_for_node("policy_under_test")
            return True, {k: v.value for k, v in materialization.metadata.items()}
        [failure] = result.get_step_failure_events()
        data, chain = failure.step_failure_data, []
        error = data.error
        while error is not None:  # the step's error and its causes (the asset's own exception is a cause)
            chain.append(error.message)
            error = error.cause
        return False, (data.user_failure_data.description if data.user_failure_data else "") + "\n".join(chain)


def test_groups_without_reward_variance_fail_training_and_mark_the_warmup(model, tokenizer, problems, tmp_path):
    save_policy(model, tokenizer, tmp_path / "untrained")
    ok, failure = _train(tmp_path / "train", tmp_path / "untrained", problems, "fail")
    assert not ok
    assert "all 8 groups (2 steps x 4 problems) had equal rewards (mean reward 0.00)" in failure
    assert "so every GRPO advantage was 0" in failure and "num_samples" in failure  # what to do

    ok, metadata = _train(tmp_path / "warmup", tmp_path / "untrained", problems, "warn")
    assert ok and metadata["no_reward_signal"] is True
    assert "NO REWARD SIGNAL: all 8 groups (2 steps x 4 problems) had equal rewards" in metadata["summary"]


def test_a_training_set_smaller_than_one_step_is_refused_before_training(model, tokenizer, problems, tmp_path):
    save_policy(model, tokenizer, tmp_path / "untrained")
    ok, failure = _train(tmp_path / "small", tmp_path / "untrained", problems.head(1), "fail", problems_per_step=4)
    assert not ok and "IndexError" not in failure
    assert "policy_under_test: problems_per_step: 1 problems cannot fill one step of 4" in failure
    assert "lower problems_per_step to at most 1" in failure
    assert not (tmp_path / "small" / "artifacts" / ".launches").exists()  # refused before anything was launched
