"""The built-in tiny policy: a locally trained tokenizer and a Qwen2-architecture model built from a config.

Nothing is downloaded. The model uses the Qwen2 architecture (so vLLM and every transformers code path treat it
like a real Qwen2.5 checkpoint) with head_dim 64, a size vLLM's CPU and GPU attention kernels support.
Checkpoints are plain `save_pretrained` directories (safetensors + tokenizer.json), loadable by transformers
and vLLM alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from ..settings import require, setting

PAD, EOS, UNK = "<|pad|>", "<|endoftext|>", "<|unk|>"


@dataclass(frozen=True)
class TinyPolicyConfig:
    """Shape of the built-in policy (~350K parameters with the defaults): fast on 2 CPU cores."""

    vocab_size: int = setting(512, "BPE vocabulary limit; the real size is what the corpus supports")
    hidden_size: int = setting(128, "model width (head_dim = hidden_size / num_heads = 64)")
    intermediate_size: int = setting(256, "MLP width")
    num_layers: int = setting(2, "transformer blocks")
    num_heads: int = setting(2, "attention heads; head_dim 64 is a size vLLM's attention kernels support")
    num_kv_heads: int = setting(1, "key/value heads (grouped-query attention)")
    max_positions: int = setting(256, "context length")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        require(self.hidden_size % self.num_heads == 0, "hidden_size", "must be a multiple of num_heads")
        require(self.num_heads % self.num_kv_heads == 0, "num_heads", "must be a multiple of num_kv_heads")
        require(self.max_positions >= 8, "max_positions", "must be >= 8")


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
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_model(spec: TinyPolicyConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
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
