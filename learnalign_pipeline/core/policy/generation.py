"""Generation backends: prompts in, K completions per prompt out.

Every backend takes one seed per prompt and promises that a prompt's K samples depend only on (model, prompt,
seed, sampling settings), not on which other prompts share its batch. Sample j of a prompt uses seed + j (as
vLLM does for the children of an n=K request), so callers space prompt seeds K apart: see `prompt_seeds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..storage.hashing import hash_int

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingSpec:
    """How one generation call samples (a value object: the stage settings that build it own the defaults)."""

    num_samples: int  # K completions per prompt
    temperature: float  # 0 means greedy decoding (then num_samples must be 1)
    top_p: float
    max_new_tokens: int

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.temperature == 0 and self.num_samples != 1:
            raise ValueError("greedy decoding (temperature 0) gives one completion per prompt; set num_samples=1")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    @classmethod
    def greedy(cls, max_new_tokens: int) -> SamplingSpec:
        return cls(num_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]  # generated ids, including the end-of-sequence id when finish_reason == "stop"
    finish_reason: FinishReason


class GenerationBackend(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], spec: SamplingSpec, seeds: Sequence[int]) -> list[list[Completion]]: ...


def prompt_seeds(keys: Sequence[str], base_seed: int, num_samples: int) -> list[int]:
    """A seed per prompt, derived from a stable key (the problem id), spaced `num_samples` apart.

    Keying on content rather than position keeps a problem's samples unchanged when the pool around it changes.
    """
    return [(hash_int(base_seed, key, 4) % (2**30 // num_samples)) * num_samples for key in keys]


class _SeededGumbelSampler(LogitsProcessor):
    """Exact sampling from softmax(logits / T) (after top-p) as argmax(logits / T + Gumbel noise).

    Each row draws its noise from its own generator, so a row's samples do not depend on its batch. Used with
    greedy `generate`, which then picks the argmax of the perturbed scores.
    """

    def __init__(self, row_seeds: Sequence[int], prompt_length: int, spec: SamplingSpec, vocab_size: int):
        self.prompt_length = prompt_length
        self.spec = spec
        noise = torch.empty(len(row_seeds), spec.max_new_tokens, vocab_size)
        for row, seed in enumerate(row_seeds):
            uniform = torch.rand(spec.max_new_tokens, vocab_size, generator=torch.Generator().manual_seed(seed))
            noise[row] = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
        self.noise = noise

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        logits = scores.float() / self.spec.temperature
        if self.spec.top_p < 1.0:
            logits = _top_p_mask(logits, self.spec.top_p)
        return logits + self.noise[:, step, : logits.shape[1]]


def _top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class TransformersBackend:
    """Batched, left-padded `model.generate` on an in-memory model (the live policy during training)."""

    name = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size  # rows (prompt x sample) per generate call; bounds activation memory

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], spec: SamplingSpec, seeds: Sequence[int]) -> list[list[Completion]]:
        if len(seeds) != len(prompts):
            raise ValueError(f"need one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
        rows = [(p, s + j) for p, s in zip(prompts, seeds) for j in range(spec.num_samples)]
        completions: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), self.batch_size):
                completions.extend(self._generate_rows(rows[start : start + self.batch_size], spec))
        finally:
            self.model.train(was_training)
        k = spec.num_samples
        return [completions[i * k : (i + 1) * k] for i in range(len(prompts))]

    def _generate_rows(self, rows: list[tuple[str, int]], spec: SamplingSpec) -> list[Completion]:
        tok = self.tokenizer
        enc = tok([p for p, _ in rows], return_tensors="pt", padding=True, padding_side="left")
        prompt_length = enc.input_ids.shape[1]
        processors = LogitsProcessorList()
        if spec.temperature > 0:
            processors.append(_SeededGumbelSampler([s for _, s in rows], prompt_length, spec, len(tok)))
        out = self.model.generate(
            **enc,
            do_sample=False,
            num_beams=1,
            max_new_tokens=spec.max_new_tokens,
            logits_processor=processors,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        return [_to_completion(row[prompt_length:].tolist(), tok) for row in out]


def _to_completion(ids: list[int], tokenizer) -> Completion:
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
        reason: FinishReason = "stop"
    else:
        reason = "length"
    return Completion(text=tokenizer.decode(ids, skip_special_tokens=True), token_ids=tuple(ids), finish_reason=reason)
