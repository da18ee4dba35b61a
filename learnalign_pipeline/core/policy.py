"""The built-in tiny policy: a locally trained tokenizer and a Qwen2-architecture model built from a config.

Nothing is downloaded. The model uses the Qwen2 architecture (so vLLM and every transformers code path treat it
like a real Qwen2.5 checkpoint) with head_dim 64, a size vLLM's CPU and GPU attention kernels support.
Checkpoints are plain `save_pretrained` directories (safetensors + tokenizer.json), loadable by transformers
and vLLM alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD, EOS, UNK = "<|pad|>", "<|endoftext|>", "<|unk|>"


@dataclass(frozen=True)
class TinyPolicySpec:
    """Shape of the built-in policy. The defaults give ~0.9M parameters: fast on 2 CPU cores."""

    vocab_size: int = 512  # upper bound for the BPE trainer; the real size is what the corpus supports
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 2  # head_dim = 128 / 2 = 64, supported by vLLM attention kernels
    num_kv_heads: int = 1
    max_positions: int = 256


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus`, with every digit its own token (as Qwen and Llama do).

    Splitting digits keeps arithmetic learnable: "68" is always "6","8", never a merged token whose digits the
    model would have to memorize.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left", clean_up_tokenization_spaces=False
    )


def build_model(spec: TinyPolicySpec, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def load_policy(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a `save_pretrained` directory, in eval mode, weights only (safetensors)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: config.json is missing")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    model.eval()
    return model, tokenizer


def save_policy(model, tokenizer, path: str | Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pretrain_tiny_policy(questions: list[str], targets: list[str], spec: TinyPolicySpec, sft, template: str, seed: int, log=None):
    """Train the tokenizer on the corpus, build the model and pre-train it: returns (model, tokenizer, history).

    `sft` is a `trainer.SFTConfig`. Targets are completions such as "3+4=7. #### 7"; a space separates them
    from the rendered question, as in generation.
    """
    from .prompts import render
    from .trainer import supervised_pretrain

    prompts = [render(template, q) for q in questions]
    completions = [" " + t for t in targets]
    tokenizer = train_tokenizer((p + c for p, c in zip(prompts[:5000], completions[:5000])), spec.vocab_size)
    model = build_model(spec, tokenizer, seed)
    history = supervised_pretrain(model, tokenizer, prompts, completions, sft, log=log)
    return model, tokenizer, history
