"""Every resource of the code location, and `bind_resources()`, the one place they are bound (`definitions.py`).

Settings resources are views of core's settings objects (`lib/config.py`): `task` (how problems are posed and
checked, shared by every generating stage), `grpo_loss` (the loss warm-up, the gradient features and training
share), `generator` (the vLLM engine) and `arithmetic` (the embedded generator's mix). The others locate storage: artifacts, the row cache, the results
database and the watched dataset files.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from ..core.data.arithmetic import MIXES, ArithmeticConfig, ArithmeticMix
from ..core.policy.generation import GenerationBackend, TransformersBackend
from ..core.policy.model import load_policy
from ..core.policy.vllm_backend import VLLMBackend, VLLMConfig
from ..core.selection.config import BackendName
from ..core.storage.artifacts import Checkpoint
from ..core.storage.row_cache import RowCache
from ..core.task.config import TaskConfig
from ..core.training.config import LOSS_FIELDS, GRPOConfig
from ..core.training.grpo import GRPOLossConfig
from ..paths import project_home
from .config import config_view, settings
from .io_managers import STEP_IO_MANAGER, ArtifactIOManager, JsonStepIOManager


class ArtifactStore(dg.ConfigurableResource):
    """Scratch space on the artifact filesystem, so finished checkpoints are published by an atomic rename."""

    root: str

    def staging_dir(self) -> Path:
        path = Path(self.root) / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path


class RowCacheResource(dg.ConfigurableResource):
    """Where rollouts and gradient features are cached row by row (shared storage when steps run on several
    machines)."""

    root: str

    def cache(self) -> RowCache:
        return RowCache(self.root)


class TaskSettings(config_view(TaskConfig, base=dg.ConfigurableResource)):
    """How a problem is posed to the policy and how its answer is checked; shared by every generating stage."""

    def config(self) -> TaskConfig:
        return settings(self, TaskConfig)

    def prompt_format(self, shots: tuple[tuple[str, str], ...] = ()):
        return self.config().prompt_format(shots)

    def make_verifier(self):
        return self.config().make_verifier()


class GRPOLoss(config_view(GRPOConfig, base=dg.ConfigurableResource, include=LOSS_FIELDS)):
    """The GRPO loss, one definition for warm-up, gradient features and training so they agree."""

    def loss_config(self, max_new_tokens: int) -> GRPOLossConfig:
        return settings(self, GRPOConfig).loss(max_new_tokens)


class Generator(config_view(VLLMConfig, base=dg.ConfigurableResource, exclude={"enable_chunked_prefill"})):
    """Generation engines: transformers in-process, or a vLLM engine started lazily per checkpoint and shut down
    when the step ends. Each generating stage picks one with its `backend` config field."""

    _engines: dict = PrivateAttr(default_factory=dict)

    def backend(self, name: BackendName, checkpoint: Checkpoint) -> GenerationBackend:
        if name == "transformers":
            model, tokenizer = load_policy(checkpoint.path)
            return TransformersBackend(model, tokenizer)
        key = str(checkpoint.path)
        if key not in self._engines:
            self._engines[key] = VLLMBackend(key, settings(self, VLLMConfig))
        return self._engines[key]

    def engine_settings(self, name: BackendName) -> dict:
        """What of the engine, besides the checkpoint and the sampling settings, decides the samples."""
        return {"backend": name, "dtype": self.dtype if name == "vllm" else None}

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


class ArithmeticSettings(config_view(ArithmeticConfig, base=dg.ConfigurableResource)):
    """The embedded generator's mix, one setting for the pool, the benchmark and the pre-training corpus."""

    def arithmetic_mix(self) -> ArithmeticMix:
        return MIXES[settings(self, ArithmeticConfig).mix]


class DatasetFiles(dg.ConfigurableResource):
    """The dataset files the problem splits read when their config has `source="datasets"` (the default), and the
    observable sources watch. An empty path means the embedded arithmetic generator."""

    pool_path: str = Field(
        default="", description="candidate pool: local path or fsspec URL; empty = embedded generator"
    )
    benchmark_path: str = Field(
        default="", description="held-out split: local path or fsspec URL; empty = embedded generator"
    )

    def path_for(self, split: str) -> str:
        return {"pool": self.pool_path, "test": self.benchmark_path}[split]


def bind_resources() -> dict:
    """Every resource the assets use, bound once. Runs launched by sensors carry no run config, so where data
    lives comes from the environment (`LEARNALIGN_HOME`, `LEARNALIGN_POOL_PATH`, `LEARNALIGN_BENCHMARK_PATH`)."""
    home = project_home()
    artifacts = str(home / "artifacts")
    return {
        "io_manager": ArtifactIOManager(root=artifacts),
        STEP_IO_MANAGER: JsonStepIOManager(root=artifacts),
        "row_cache": RowCacheResource(root=str(home / "row_cache")),
        "store": ArtifactStore(root=artifacts),
        "task": TaskSettings(),
        "grpo_loss": GRPOLoss(),
        "generator": Generator(),
        "duckdb": DuckDBResource(database=str(home / "results.duckdb")),
        "arithmetic": ArithmeticSettings(),
        "datasets": DatasetFiles(
            pool_path=os.environ.get("LEARNALIGN_POOL_PATH", ""),
            benchmark_path=os.environ.get("LEARNALIGN_BENCHMARK_PATH", ""),
        ),
    }
