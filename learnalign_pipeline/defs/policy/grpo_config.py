"""Run config of a GRPO stage (warm-up and final training use the same fields)."""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field

from ...core.generation import SamplingSpec
from ...core.trainer import GRPOTrainConfig
from ..resources import GRPOLoss, TaskSettings


class GRPOStageConfig(dg.Config):
    """On-policy GRPO: each step samples `num_samples` completions for `problems_per_step` problems and takes
    one AdamW step. The loss itself (beta, clipping, aggregation) comes from the shared `grpo_loss` resource."""

    steps: int = Field(default=60, description="optimizer steps")
    problems_per_step: int = Field(default=32, description="problems per step")
    num_samples: int = Field(default=8, description="rollouts per problem (group size G)")
    temperature: float = Field(default=1.0, description="sampling temperature of the rollouts")
    learning_rate: float = Field(default=3e-4, description="AdamW learning rate (the papers use 1e-6 for 1.5B models)")
    weight_decay: float = Field(default=0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(default=1.0, description="gradient clipping norm")
    seed: int = Field(default=0, description="seed of batch order and sampling")
    on_nonfinite: Literal["fail", "exclude"] = Field(
        default="fail", description="NaN/inf problem losses: fail naming them, or leave them out of the step and count them"
    )
    checkpoint_every: int = Field(
        default=10,
        description="save the full training state (weights, optimizer, RNG, log) every this many steps, so a killed run "
        "resumes from it and ends bitwise equal to an uninterrupted one; 0 disables it. Does not change the result.",
    )

    def train_config(self, task: TaskSettings, loss: GRPOLoss) -> GRPOTrainConfig:
        return GRPOTrainConfig(
            steps=self.steps,
            problems_per_step=self.problems_per_step,
            sampling=SamplingSpec(num_samples=self.num_samples, temperature=self.temperature, max_new_tokens=task.max_new_tokens),
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            loss=loss.config(task.max_new_tokens),
            template=task.prompt_format(),
            seed=self.seed,
            on_nonfinite=self.on_nonfinite,
        )
