"""Where model computations run and in which precision: one setting for every stage that runs a model.

CUDA when present, else CPU. Weights are held in float32 (master weights: an update of 1e-6 relative rounds away
in bfloat16, which resolves about 2**-8); on CUDA the forward and backward passes run under bfloat16 autocast, on
CPU everything stays float32, which keeps CPU runs bitwise reproducible. Every tensor a core function creates is
made on the device of the tensors it works on; tests run the core paths with a `meta` default device, so a
factory call that forgets its `device=` fails there instead of on a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

from .settings import require, setting

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ComputeConfig:
    """Device and precision of the policy computations (rollouts with transformers, features, training)."""

    device: str = setting("auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:<index>")
    autocast: Literal["auto", "bfloat16", "float16", "off"] = setting(
        "auto", "mixed precision of forward/backward passes: auto = bfloat16 on CUDA, off (float32) on CPU"
    )

    def __post_init__(self) -> None:
        require(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "device",
            f"{self.device!r} is not auto, cpu, cuda or cuda:<index>",
        )

    def torch_device(self) -> torch.device:
        """The device to compute on; asking for CUDA where there is none is an error, not a silent CPU run."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"compute device {self.device!r} was requested but CUDA is not available: use 'auto' or 'cpu'"
            )
        return device

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain float32."""
        if self.autocast == "off":
            return None
        if self.autocast == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else None
        return DTYPES[self.autocast]

    def autocast_context(self):
        """`torch.autocast` on the compute device with `autocast_dtype()`, or a no-op for float32."""
        dtype = self.autocast_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device().type, dtype=dtype)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move `model` to the compute device with float32 (master) weights."""
        return model.to(device=self.torch_device(), dtype=torch.float32)


CPU = ComputeConfig(device="cpu")
