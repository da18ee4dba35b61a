"""Generation backends: prompts in, K completions per prompt out.

Every backend takes one seed per prompt and promises that a prompt's K samples depend only on (model, prompt,
seed, sampling settings), not on which other prompts share its batch. Sample j of a prompt uses seed + j (as
vLLM does for the children of an n=K request), so callers space prompt seeds K apart: see `prompt_seeds`.

Both backends stop by one rule (`finish_completion`), so their completions agree token for token:
- a completion stops at a stop id (the tokenizer's EOS and every EOS id in the checkpoint's generation_config.json:
  Qwen2.5-Instruct has two) or at the token that completes a stop string (the prompt format's, e.g. lm-eval's
  "Question:" for gsm8k), whichever comes first, else at max_new_tokens;
- token_ids are every sampled token up to and including the one that triggered the stop, nothing appended;
- text is the decoded ids without a final stop id, cut before the first stop string;
- finish_reason is "stop" when a stop fired, else "length".
This is vLLM's own output with `stop`, `stop_token_ids` and `include_stop_str_in_output=False`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from ..storage.hashing import hash_int
from ..task.prompts import encode_prompt, pad_token_id

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingSpec:
    """How one generation call samples (a value object: the stage settings that build it own the defaults)."""

    num_samples: int  # K completions per prompt
    temperature: float  # 0 means greedy decoding (then num_samples must be 1)
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...] = ()  # stop strings: a completion ends at the token that completes one (text cut before it)

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.temperature == 0 and self.num_samples != 1:
            raise ValueError("greedy decoding (temperature 0) gives one completion per prompt; set num_samples=1")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @classmethod
    def greedy(cls, max_new_tokens: int) -> SamplingSpec:
        return cls(num_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]  # sampled ids up to and including the one that stopped it (never an appended id)
    finish_reason: FinishReason


class GenerationBackend(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], spec: SamplingSpec, seeds: Sequence[int]) -> list[list[Completion]]: ...


def prompt_seeds(keys: Sequence[str], base_seed: int, num_samples: int) -> list[int]:
    """A seed per prompt, derived from a stable key (the problem id), spaced `num_samples` apart.

    Keying on content rather than position keeps a problem's samples unchanged when the pool around it changes.
    """
    return [(hash_int(base_seed, key, 4) % (2**30 // num_samples)) * num_samples for key in keys]


def stop_token_ids(tokenizer, generation_config) -> tuple[int, ...]:
    """Every id that ends a completion: the tokenizer's EOS and each EOS id of the checkpoint's generation config
    (Qwen2.5-Instruct: <|im_end|> and <|endoftext|>; vLLM stops on both too)."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids += [configured] if isinstance(configured, int) else list(configured or [])
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def _string_stop(ids: list[int], stop: Sequence[str], tokenizer) -> int | None:
    """Index of the token that completes the first stop string in the decoded ids, or None. Decoding is
    prefix-monotone, so a binary search over prefixes finds it with log2(len) decodes."""
    if not stop or not any(s in _decode(tokenizer, ids) for s in stop):
        return None
    lo, hi = 1, len(ids)  # the shortest prefix whose text holds a stop string
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in _decode(tokenizer, ids[:mid]) for s in stop):
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


def finish_completion(ids: Sequence[int], stop_ids: Sequence[int], stop: Sequence[str], tokenizer) -> Completion:
    """The completion the sampled `ids` make under the stopping rule (module docstring). Applied to the raw output
    of either backend; idempotent on its own result."""
    ids = list(ids)
    first_id = next((i for i, t in enumerate(ids) if t in stop_ids), None)
    by_string = _string_stop(ids[:first_id] if first_id is not None else ids, stop, tokenizer)
    if by_string is not None:
        kept = ids[: by_string + 1]
        text = _decode(tokenizer, kept)
        return Completion(text[: min(text.find(s) for s in stop if s in text)], tuple(kept), "stop")
    if first_id is not None:
        kept = ids[: first_id + 1]
        return Completion(_decode(tokenizer, kept[:-1]), tuple(kept), "stop")
    return Completion(_decode(tokenizer, ids), tuple(ids), "length")


class StopOnStrings(StoppingCriteria):
    """Ends a row of `generate` at the token that completes one of `stop` in its generated text: the same test
    `finish_completion` applies (transformers' own StopStringCriteria matches token strings and could end a row
    where the rule does not, after which the row is padded with a pad id that may be an EOS id)."""

    def __init__(self, stop: Sequence[str], tokenizer, prompt_length: int):
        self.stop, self.tokenizer, self.prompt_length = tuple(stop), tokenizer, prompt_length
        self.window = max(map(len, self.stop)) + 8  # tail tokens to decode: each non-empty token adds >= 1 character

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tails = [_decode(self.tokenizer, row[-self.window :]) for row in input_ids[:, self.prompt_length :].tolist()]
        return torch.tensor([any(s in t for s in self.stop) for t in tails], dtype=torch.bool, device=input_ids.device)


class SeededGumbelSampler(LogitsProcessor):
    """Exact sampling from softmax(logits / T) (after top-p) as argmax(logits / T + Gumbel noise), drawn per step.

    Each row has its own generator on the logits' device, seeded with the row's seed, and draws one uniform per
    logit column at every step: a row's samples depend only on its seed, never on its batch, and memory is one
    [rows, vocab] noise tensor whatever max_new_tokens is. The width is the logits' (vLLM samples over every
    column too, padded-vocabulary columns included; they decode to nothing). On CPU the stream equals drawing all
    steps at once, so samples do not depend on max_new_tokens; on CUDA the generators are CUDA's (other samples
    than on CPU for the same seed).
    """

    def __init__(self, row_seeds: Sequence[int], spec: SamplingSpec):
        self.row_seeds = list(row_seeds)
        self.spec = spec
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.row_seeds]
        logits = scores.float() / self.spec.temperature
        if self.spec.top_p < 1.0:
            logits = _top_p_mask(logits, self.spec.top_p)
        vocab = logits.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in self._generators])
        return logits - torch.log(-torch.log(uniform.clamp_(1e-20, 1.0 - 1e-7)))


def _top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class TransformersBackend:
    """Batched, left-padded `model.generate` on an in-memory model (the live policy during training), on the model's
    device, optionally under autocast (`autocast_dtype`, e.g. bfloat16 on CUDA)."""

    name = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 512, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size  # rows (prompt x sample) per generate call; bounds activation memory
        self.autocast_dtype = autocast_dtype
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))

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
        device = self.model.device
        encoded = [encode_prompt(tok, p) for p, _ in rows]
        prompt_length = max(map(len, encoded))
        pad = pad_token_id(tok)
        left = [prompt_length - len(ids) for ids in encoded]  # left-padded: every row's next token is at the end
        input_ids = [[pad] * n + ids for n, ids in zip(left, encoded)]
        attention_mask = [[0] * n + [1] * len(ids) for n, ids in zip(left, encoded)]
        enc = {  # lists: tensors made here, on device
            "input_ids": torch.tensor(input_ids, dtype=torch.long, device=device),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long, device=device),
        }
        processors = LogitsProcessorList()
        if spec.temperature > 0:
            processors.append(SeededGumbelSampler([s for _, s in rows], spec))
        # generate() merges the checkpoint's generation_config.json into every call, and real instruct checkpoints
        # ship a repetition penalty and top-k that would change what is sampled: the model's is swapped for a
        # neutral one while generating.
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=spec.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=list(self.stop_ids),
        )
        stopping = [StopOnStrings(spec.stop, tok, prompt_length)] if spec.stop else []
        autocast = (
            torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype else contextlib.nullcontext()
        )
        checkpoint_config, self.model.generation_config = self.model.generation_config, config
        try:
            with autocast:
                out = self.model.generate(**enc, logits_processor=processors, stopping_criteria=stopping)
        finally:
            self.model.generation_config = checkpoint_config
        return [finish_completion(row[prompt_length:].tolist(), self.stop_ids, spec.stop, tok) for row in out.cpu()]


def with_stop_strings(spec: SamplingSpec, stop: Sequence[str]) -> SamplingSpec:
    """`spec` that also stops at `stop` (the prompt format's stop strings)."""
    return dataclasses.replace(spec, stop=tuple(dict.fromkeys((*spec.stop, *stop))))
