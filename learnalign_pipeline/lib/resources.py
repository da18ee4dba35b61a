"""Every resource of the code location, and `bind_resources()`, the one place they are bound (`definitions.py`).

Settings resources are views of core's settings objects (`lib/config.py`): `task` (how problems are posed and
checked, shared by every generating stage), `grpo_loss` (the loss warm-up, the gradient features and training
share), `compute` (device and precision), `trainer` (how GRPO trains: TRL processes, micro-batches),
`generator` (the vLLM engine) and `arithmetic` (the embedded generator's mix). The others locate storage:
artifacts, the row cache, the results
database and the watched dataset files.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from ..core.compute import ComputeConfig
from ..core.data.arithmetic import MIXES, ArithmeticConfig, ArithmeticMix
from ..core.data.datasets import read_datasets
from ..core.data.loaders import SourceConfig
from ..core.policy.generation import GenerationBackend, TransformersBackend
from ..core.policy.gguf import convert_gguf
from ..core.policy.model import load_policy
from ..core.policy.vllm_backend import VLLMBackend, VLLMConfig
from ..core.selection.config import BackendName
from ..core.storage.artifacts import Checkpoint, publish_directory
from ..core.storage.hashing import sha256_file
from ..core.storage.row_cache import RowCache
from ..core.task.config import TaskConfig
from ..core.training.config import LOSS_FIELDS, GRPOConfig, TrainerConfig
from ..core.training.grpo import GRPOLossConfig
from ..paths import project_home
from .config import config_view, settings
from .io_managers import STEP_IO_MANAGER, ArtifactIOManager, JsonStepIOManager
from .runs import staging_name

DATASETS_FILE = (
    "datasets.json"  # under LEARNALIGN_HOME: `learnalign dataset` writes it, the `datasets` resource reads it
)


class ArtifactStore(dg.ConfigurableResource):
    """Scratch space on the artifact filesystem, so finished checkpoints are published by an atomic rename."""

    root: str

    def staging_dir(self) -> Path:
        """A fresh directory named after this process (`lib/runs.py` removes it if the process dies)."""
        path = Path(self.root) / ".staging" / staging_name()
        path.mkdir(parents=True)
        return path

    def converted_gguf(self, gguf_path: str) -> tuple[Path, str]:
        """(the `save_pretrained` conversion of a GGUF file, the file's sha256). Converted once per content: the
        conversion lives under `.gguf/<sha256>` and later runs reuse it."""
        digest = sha256_file(Path(gguf_path))
        final = Path(self.root) / ".gguf" / digest
        if not (final / "config.json").is_file():
            staging = self.staging_dir()
            convert_gguf(gguf_path, staging)
            publish_directory(staging, final)
        return final, digest


class RowCacheResource(dg.ConfigurableResource):
    """Where rollouts and gradient features are cached row by row (shared storage when steps run on several
    machines)."""

    root: str

    def cache(self, warn=None) -> RowCache:
        """The cache; `warn` receives a line for every file that fails verification (e.g. `context.log.warning`)."""
        return RowCache(self.root, warn=warn)


class TaskSettings(config_view(TaskConfig, base=dg.ConfigurableResource)):
    """How a problem is posed to the policy and how its answer is checked; shared by every generating stage."""

    def config(self) -> TaskConfig:
        return settings(self, TaskConfig)

    def prompt_format(self, shots: tuple[tuple[str, str], ...] = ()):
        return self.config().prompt_format(shots)

    def make_verifier(self):
        return self.config().make_verifier()


class ComputeSettings(config_view(ComputeConfig, base=dg.ConfigurableResource)):
    """Device and precision of every model computation (CUDA when present with bfloat16 autocast; float32 on CPU)."""

    def config(self) -> ComputeConfig:
        return settings(self, ComputeConfig)

    def load_policy(self, path: str | Path):
        """(model, tokenizer) of a checkpoint on the compute device, float32 master weights."""
        return load_policy(path, device=self.config().torch_device())

    def generation_backend(self, model, tokenizer) -> TransformersBackend:
        """In-process generation from `model` under the compute setting's autocast."""
        return TransformersBackend(model, tokenizer, autocast_dtype=self.config().autocast_dtype())


class TrainerSettings(config_view(TrainerConfig, base=dg.ConfigurableResource)):
    """How GRPO stages train: TRL in `processes` processes (one per GPU), micro-batches, rollouts (seeded or vLLM)."""

    def config(self) -> TrainerConfig:
        return settings(self, TrainerConfig)


class GRPOLoss(config_view(GRPOConfig, base=dg.ConfigurableResource, include=LOSS_FIELDS)):
    """The GRPO loss, one definition for warm-up, gradient features and training so they agree."""

    def loss_config(self, max_new_tokens: int) -> GRPOLossConfig:
        return settings(self, GRPOConfig).loss(max_new_tokens)


class Generator(config_view(VLLMConfig, base=dg.ConfigurableResource)):
    """Generation engines: transformers in-process on the compute device, or a vLLM engine started lazily per
    checkpoint. At most one vLLM engine is alive in a process: asking for another checkpoint's engine first shuts
    the current one down (an engine holds its share of GPU memory until then), and the step's end shuts it down.
    Each generating stage picks an engine with its `backend` config field."""

    _engine: VLLMBackend | None = PrivateAttr(default=None)

    def backend(
        self, name: BackendName, checkpoint: Checkpoint, compute: ComputeConfig | None = None
    ) -> GenerationBackend:
        if name == "transformers":
            compute = compute or ComputeConfig()
            model, tokenizer = load_policy(checkpoint.path, device=compute.torch_device())
            return TransformersBackend(model, tokenizer, autocast_dtype=compute.autocast_dtype())
        if self._engine is not None and self._engine.model_path != str(checkpoint.path):
            self.close_engine()
        if self._engine is None:
            engine = settings(self, VLLMConfig)
            visible = (compute or ComputeConfig()).visible_devices(engine.tensor_parallel_size)
            self._engine = VLLMBackend(str(checkpoint.path), engine, visible_devices=visible)
        return self._engine

    def close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def engine_settings(self, name: BackendName) -> dict:
        """What of the engine, besides the checkpoint and the sampling settings, decides the samples."""
        return {"backend": name, "dtype": self.dtype if name == "vllm" else None}

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close_engine()


class ArithmeticSettings(config_view(ArithmeticConfig, base=dg.ConfigurableResource)):
    """The embedded generator's mix, one setting for the pool, the benchmark and the pre-training corpus."""

    def arithmetic_mix(self) -> ArithmeticMix:
        return MIXES[settings(self, ArithmeticConfig).mix]


class DatasetFiles(dg.ConfigurableResource):
    """The dataset files the problem splits read when their config has `source="datasets"` (the default), and the
    observable sources watch. The settings file (`learnalign dataset`) is read at every observation and load, so a
    new path or column mapping needs no restart; a split it does not name uses the path given here (environment),
    and an empty path means the embedded arithmetic generator."""

    pool_path: str = Field(
        default="", description="candidate pool: local path or fsspec URL; empty = embedded generator"
    )
    benchmark_path: str = Field(
        default="", description="held-out split: local path or fsspec URL; empty = embedded generator"
    )
    settings_file: str = Field(
        default="",
        description="datasets.json written by `learnalign dataset` (path and column mapping per split); wins over the paths above",
    )

    def configured(self, split: str) -> SourceConfig | None:
        """The split's entry of the settings file, with its column mapping, or None."""
        return read_datasets(Path(self.settings_file)).get(split) if self.settings_file else None

    def path_for(self, split: str) -> str:
        configured = self.configured(split)
        return configured.path if configured else {"pool": self.pool_path, "test": self.benchmark_path}[split]

    def origin(self, split: str) -> str:
        if self.configured(split):
            return f"settings file {self.settings_file}"
        if self.path_for(split):
            return (
                "environment (LEARNALIGN_POOL_PATH)" if split == "pool" else "environment (LEARNALIGN_BENCHMARK_PATH)"
            )
        return "embedded generator"


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
        "compute": ComputeSettings(),
        "trainer": TrainerSettings(),
        "grpo_loss": GRPOLoss(),
        "generator": Generator(),
        "duckdb": DuckDBResource(database=str(home / "results.duckdb")),
        "arithmetic": ArithmeticSettings(),
        "datasets": DatasetFiles(
            pool_path=os.environ.get("LEARNALIGN_POOL_PATH", ""),
            benchmark_path=os.environ.get("LEARNALIGN_BENCHMARK_PATH", ""),
            settings_file=str(home / DATASETS_FILE),
        ),
    }
