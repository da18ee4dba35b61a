"""A GGUF file (llama.cpp's format, how many users keep their models) as a `save_pretrained` checkpoint.

transformers reads GGUF with the `gguf` package and dequantizes the weights to float32. The loaded model cannot be
saved as it is (it still carries the GGUF quantization config), so its state dict is copied into a model built from
the same config, which saves like any other checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from .model import count_parameters, save_policy

GGUF_HINT = "reading GGUF files needs the `gguf` package: pip install 'learnalign_pipeline[gguf]'"


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def load_gguf(path: str | Path):
    """(model, tokenizer) as transformers loads the GGUF file: float32, eval mode, still marked as quantized."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise RuntimeError(GGUF_HINT) from error
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def plain_copy(model):
    """The same weights in a model built from the same config without its quantization config (savable)."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def convert_gguf(path: str | Path, destination: str | Path) -> int:
    """Write the GGUF file at `path` as a `save_pretrained` directory (float32 safetensors and the tokenizer with
    its chat template) at `destination`; returns the parameter count."""
    model, tokenizer = load_gguf(path)
    plain = plain_copy(model)
    del model
    save_policy(plain, tokenizer, destination)
    return count_parameters(plain)
