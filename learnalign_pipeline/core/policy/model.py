"""The built-in tiny policy: a locally trained tokenizer and a Qwen2-architecture model built from a config.

Nothing is downloaded. The model uses the Qwen2 architecture (so vLLM and every transformers code path treat it
like a real Qwen2.5 checkpoint) with head_dim 64, a size vLLM's CPU and GPU attention kernels support.
Checkpoints are plain `save_pretrained` directories (safetensors + tokenizer.json), loadable by transformers
and vLLM alike.

`style="qwen"` gives the tiny policy the quirks of a real Qwen2.5-Instruct checkpoint, so CPU tests exercise what
a GPU user's model does: special tokens after the BPE vocabulary (<|endoftext|>, <|im_start|>, <|im_end|>),
eos <|im_end|> and pad <|endoftext|>, a chat template with a default system message, a generation_config.json
with both EOS ids and non-neutral sampling defaults (which must never leak into our sampling), a vocabulary padded
beyond the tokenizer (Qwen2.5: 151,936 logits for 151,665 tokens), optionally an untied output head (7B) and bf16
weights on disk.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ..compute import DTYPES
from ..settings import require, require_finite, setting

PAD, EOS, UNK = "<|pad|>", "<|endoftext|>", "<|unk|>"
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"  # Qwen2.5's specials, in its id order
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
Style = Literal["plain", "qwen"]


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
    style: Style = setting(
        "plain",
        "plain: one EOS, no chat template, as many logits as tokens; qwen: Qwen2.5-Instruct's quirks (specials after "
        "the BPE vocabulary, chat template, eos <|im_end|> and pad <|endoftext|>, both EOS ids and sampling defaults "
        "in generation_config.json, vocabulary padded beyond the tokenizer)",
    )
    tie_word_embeddings: bool = setting(
        True, "share the output head with the input embedding (Qwen2.5 up to 3B); False: an untied lm_head (7B)"
    )
    save_dtype: Literal["float32", "bfloat16"] = setting(
        "float32", "dtype of the weights on disk, the checkpoint's base dtype (real Qwen checkpoints: bfloat16)"
    )

    def __post_init__(self) -> None:
        require_finite(self)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        require(self.hidden_size % self.num_heads == 0, "hidden_size", "must be a multiple of num_heads")
        require(self.num_heads % self.num_kv_heads == 0, "num_heads", "must be a multiple of num_kv_heads")
        require(self.max_positions >= 8, "max_positions", "must be >= 8")


def train_tokenizer(corpus: Iterable[str], vocab_size: int, style: Style = "plain") -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus`, with every digit its own token (as Qwen and Llama do).

    Splitting digits keeps arithmetic learnable: "68" is always "6","8", never a merged token whose digits the
    model would have to memorize.
    """
    if style == "qwen":
        return _qwen_tokenizer(corpus, vocab_size)
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


def _qwen_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", clean_up_tokenization_spaces=False)
    fast.add_special_tokens({"additional_special_tokens": [ENDOFTEXT, IM_START, IM_END]})
    fast.eos_token, fast.pad_token = IM_END, ENDOFTEXT
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def padded_vocab_size(tokens: int) -> int:
    """Logit rows for `tokens` tokens, Qwen style: rounded up to a multiple of 64, plus 64 that no token uses."""
    return math.ceil(tokens / 64) * 64 + 64


def build_model(spec: TinyPolicyConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    qwen = spec.style == "qwen"
    eos_ids = [tokenizer.eos_token_id] + ([tokenizer.convert_tokens_to_ids(ENDOFTEXT)] if qwen else [])
    config = Qwen2Config(
        vocab_size=padded_vocab_size(len(tokenizer)) if qwen else len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=tokenizer.pad_token_id if qwen else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype=spec.save_dtype,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if qwen:  # Qwen2.5-Instruct's generation_config.json: both EOS ids and its own sampling defaults
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=True,
            temperature=0.7,
            top_p=0.8,
            top_k=20,
            repetition_penalty=1.05,
        )
    return model


def load_policy(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """(model, tokenizer) from a `save_pretrained` directory, in eval mode on `device`, weights only (safetensors).
    Weights are upcast to `dtype` (float32 master weights by default, whatever the checkpoint's dtype on disk)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: config.json is missing")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device)
    model.eval()
    return model, tokenizer


def checkpoint_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in (its config.json), which saves of its descendants keep."""
    config = json.loads((Path(path) / "config.json").read_text())
    return DTYPES.get(config.get("dtype") or config.get("torch_dtype") or "float32", torch.float32)


def save_policy(
    model, tokenizer, path: str | Path, dtype: torch.dtype | None = None, state: dict | None = None
) -> None:
    """`save_pretrained` of model and tokenizer, weights in `dtype` (default: as held). The live model is not
    touched: a float32 master model saved in bfloat16 keeps its float32 weights. `state` replaces the model's own
    state dict (e.g. weights gathered from every rank of a sharded training run)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    held = next(iter(state.values())).dtype if state is not None else next(model.parameters()).dtype
    if dtype is None or dtype == held:
        model.save_pretrained(path, state_dict=state, safe_serialization=True)
    else:
        kept, seen = {}, set()
        for name, tensor in (model.state_dict() if state is None else state).items():
            if tensor.data_ptr() not in seen:  # a tied head shares the embedding: stored once, as HF does
                seen.add(tensor.data_ptr())
                kept[name] = tensor.detach().to(device="cpu", dtype=dtype)
        model.save_pretrained(path, state_dict=kept, safe_serialization=True)
        # save_pretrained records the live model's dtype; config.json must say what the files hold
        config = json.loads((path / "config.json").read_text())
        config["dtype"] = str(dtype).removeprefix("torch.")
        (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(path)


PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def copy_checkpoint(source: str | Path, destination: Path) -> int:
    """Copy a `save_pretrained` directory's top-level files byte for byte (weights keep their dtype, nothing is
    loaded) and return the parameter count from the safetensors headers. Pickled weights are refused."""
    from safetensors import safe_open

    source = Path(source)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {source}: config.json is missing")
    weights = sorted(source.glob("*.safetensors"))
    pickled = [p.name for p in source.iterdir() if p.suffix in PICKLED_WEIGHTS]
    if not weights:
        raise ValueError(
            f"{source} has no .safetensors weights{f' (only pickled {pickled})' if pickled else ''}: convert it with "
            "`AutoModelForCausalLM.from_pretrained(path).save_pretrained(path, safe_serialization=True)`"
        )
    parameters = 0
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix not in PICKLED_WEIGHTS:
            shutil.copyfile(path, destination / path.name)
    for path in weights:
        with safe_open(path, "pt") as f:
            parameters += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return parameters


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
