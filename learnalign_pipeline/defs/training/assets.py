"""GRPO on the selected subset, starting from the warm-up policy."""


import dagster as dg
import polars as pl

from ...core.artifacts import Checkpoint
from ..constants import gpu_step
from ..policy.checkpoints import grpo_stage
from ..policy.grpo_config import GRPOStageConfig
from ..resources import ArtifactStore, GRPOLoss, TaskSettings


class TrainingConfig(GRPOStageConfig):
    """GRPO on the selected subset: 60 steps x 32 problems x 8 samples (7.5 epochs of a 256-problem subset)."""


@dg.asset(group_name="training", code_version="3", **gpu_step("transformers"))
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
    return grpo_stage(context, config, task, grpo_loss, store, warmup_policy, selected_subset)
