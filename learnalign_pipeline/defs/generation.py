"""The generation engine as a resource: transformers in-process, or a vLLM engine started lazily per checkpoint
and shut down when the step ends."""

from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from ..core.artifacts import Checkpoint
from ..core.generation import GenerationBackend, TransformersBackend
from ..core.policy import load_policy
from ..core.vllm_backend import VLLMBackend, VLLMSettings

BackendName = Literal["transformers", "vllm"]


class Generator(dg.ConfigurableResource):
    """Settings of the generation engines; each generating stage picks one with its `backend` config field."""

    vllm_dtype: str = Field(default="float32", description="vLLM weights dtype: float32 on CPU, bfloat16 on GPUs")
    vllm_max_model_len: int = Field(default=256, description="vLLM context length (prompt + completion)")
    vllm_memory_utilization: float = Field(default=0.1, description="vLLM KV-cache share of GPU memory (of RAM on CPU)")
    vllm_enforce_eager: bool = Field(default=True, description="skip CUDA-graph / compile warm-up")
    seed: int = Field(default=0, description="engine seed (per-request seeds still decide the samples)")
    _engines: dict = PrivateAttr(default_factory=dict)

    def backend(self, name: BackendName, checkpoint: Checkpoint) -> GenerationBackend:
        if name == "transformers":
            model, tokenizer = load_policy(checkpoint.path)
            return TransformersBackend(model, tokenizer)
        key = str(checkpoint.path)
        if key not in self._engines:
            settings = VLLMSettings(
                dtype=self.vllm_dtype,
                max_model_len=self.vllm_max_model_len,
                gpu_memory_utilization=self.vllm_memory_utilization,
                enforce_eager=self.vllm_enforce_eager,
                seed=self.seed,
            )
            self._engines[key] = VLLMBackend(key, settings)
        return self._engines[key]

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
