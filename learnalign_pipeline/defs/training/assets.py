"""GRPO on the selected subset, starting from the warm-up policy."""


import time

import dagster as dg
import polars as pl

from ...core.artifacts import Checkpoint
from ...core.policy import load_policy
from ...core.trainer import train_grpo
from ..constants import gpu_step
from ..policy.checkpoints import publish_checkpoint
from ..policy.grpo_config import GRPOStageConfig
from ..resources import ArtifactStore, GRPOLoss, TaskSettings


class TrainingConfig(GRPOStageConfig):
    """GRPO on the selected subset: 60 steps x 32 problems x 8 samples (7.5 epochs of a 256-problem subset)."""


@dg.asset(group_name="training", code_version="1", **gpu_step("transformers"))
def trained_policy(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    store: ArtifactStore,
    selected_subset: pl.DataFrame,
    warmup_policy: Checkpoint,
) -> dg.Output[Checkpoint]:
    """The RL-trained checkpoint (`save_pretrained` directory with tokenizer and training log)."""
    model, tokenizer = load_policy(warmup_policy.path)
    started = time.perf_counter()
    history = train_grpo(model, tokenizer, selected_subset, task.make_verifier(), config.train_config(task, grpo_loss), log=context.log.debug)
    return publish_checkpoint(
        store,
        model,
        tokenizer,
        history,
        {**config.model_dump(), "loss": grpo_loss.model_dump(), "subset_size": selected_subset.height},
        subset_size=selected_subset.height,
        reward_first_step=history[0]["reward_mean"],
        reward_last_step=history[-1]["reward_mean"],
        train_seconds=round(time.perf_counter() - started, 1),
    )
