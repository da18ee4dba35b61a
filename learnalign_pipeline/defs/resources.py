"""Resources shared by the stages: where artifacts live, how problems are posed and checked, the GRPO loss."""


import os
import uuid
from pathlib import Path
from typing import Literal

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..core.grpo import GRPOLossConfig
from ..core.prompts import PromptFormat
from ..core.verify import make_verifier
from .generation import Generator
from .io_manager import ArtifactIOManager
from .sharding import STEP_IO_MANAGER, JsonStepIOManager, RowCacheResource


def project_home() -> Path:
    """Local state of this code location: artifacts, results database, Dagster instance (`LEARNALIGN_HOME`)."""
    return Path(os.environ.get("LEARNALIGN_HOME", Path.cwd() / ".learnalign")).resolve()


class ArtifactStore(dg.ConfigurableResource):
    """Scratch space on the artifact filesystem, so finished checkpoints are published by an atomic rename."""

    root: str

    def staging_dir(self) -> Path:
        path = Path(self.root) / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path


class TaskSettings(dg.ConfigurableResource):
    """How a problem is posed to the policy and how its answer is checked; shared by every generating stage."""

    template: str = "qa"  # prompt template name (core.prompts.TEMPLATES)
    chat: bool = False  # wrap prompts in the model's chat template (instruct models)
    # numeric_* for GSM8K-style numbers (lm-eval filters), math_verify for LaTeX / \boxed{} answers (MATH).
    verifier: Literal["numeric_flexible", "numeric_strict", "math_verify"] = "numeric_flexible"
    verifier_timeout_s: float = 5.0  # math_verify: wall-clock limit per answer; a timeout scores 0
    max_new_tokens: int = 24  # completion length limit for rollouts, training and benchmarks

    def prompt_format(self, shots: tuple[tuple[str, str], ...] = ()) -> PromptFormat:
        return PromptFormat(self.template, shots=shots, chat=self.chat)

    def make_verifier(self):
        return make_verifier(self.verifier, timeout_s=self.verifier_timeout_s)


class GRPOLoss(dg.ConfigurableResource):
    """The GRPO loss, one definition for warm-up, gradient features and training so they agree."""

    beta: float = 0.04  # KL weight against the reference (pre-trained) policy, LearnAlign's setting
    clip_epsilon: float = 0.2
    scale_rewards: bool = True  # std-normalized advantages (GRPO); False for Dr. GRPO
    aggregation: Literal["sample_mean", "token_mean", "constant"] = "sample_mean"

    def config(self, max_new_tokens: int) -> GRPOLossConfig:
        return GRPOLossConfig(
            beta=self.beta,
            clip_epsilon=self.clip_epsilon,
            scale_rewards=self.scale_rewards,
            aggregation=self.aggregation,
            max_completion_tokens=max_new_tokens,
        )


@dg.definitions
def resources() -> dg.Definitions:
    home = project_home()
    artifacts = str(home / "artifacts")
    return dg.Definitions(
        resources={
            "io_manager": ArtifactIOManager(root=artifacts),
            STEP_IO_MANAGER: JsonStepIOManager(root=artifacts),
            "row_cache": RowCacheResource(root=str(home / "row_cache")),
            "store": ArtifactStore(root=artifacts),
            "task": TaskSettings(),
            "grpo_loss": GRPOLoss(),
            "generator": Generator(),
            "duckdb": DuckDBResource(database=str(home / "results.duckdb")),
        }
    )
