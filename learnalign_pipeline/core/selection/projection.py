"""Seeded random projections of per-problem linear-layer gradients, never materializing the full matrix.

A linear layer's per-problem weight gradient is a sum of outer products over that problem's tokens,
dW_p = sum_t gy_t x_t^T (gy: gradient at the layer output, x: layer input). A projector acts in three places
(`capture.py` calls them from inside the hooks, so nothing of a layer's full width is kept per token):
`project_input(x)` in the forward hook, `project_output(gy)` in the gradient hook, and `layer_block` on the summed
per-problem outer products of the projected pairs.

* `KroneckerProjector` (LoGra): x P_in and gy P_out, then the k_out x k_in outer products. This equals projecting
  vec(dW_p) by P_out (x) P_in, but costs O(T (in k_in + out k_out)) per layer instead of O(out in k), and holds
  k_in numbers per token and layer until the gradient arrives. An optional second Rademacher projection maps the
  concatenated layer blocks to a fixed width.
* `DenseProjector` (the LESS/TRAK reference): keeps x and gy whole, forms dW_p, then multiplies by a Rademacher
  matrix R [out*in, k] / sqrt(k), regenerated chunk by chunk from a per-layer seed. Memory P x out x in per
  layer: a reference for small models, not for 1.5B-scale features.

All random matrices come from CPU `torch.Generator`s seeded by (seed, layer name), so the same seed gives the
same features on any device. Projections run in at least float32, whatever the model's compute dtype.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from ..storage.hashing import hash_int


def layer_seed(seed: int, name: str) -> int:
    return hash_int(seed, name, 7)


def rademacher(rows: int, cols: int, seed: int) -> torch.Tensor:
    """[rows, cols] matrix of +-1 (float32, on the CPU) from a CPU generator (identical on every machine)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    bits = torch.randint(0, 2, (rows, cols), dtype=torch.int8, generator=generator, device="cpu")
    return bits.to(torch.float32).mul_(2.0).sub_(1.0)


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype projections of `t` run in: at least float32 (bfloat16 activations are promoted)."""
    return torch.promote_types(t.dtype, torch.float32)


def per_problem_outer(x: torch.Tensor, gy: torch.Tensor, owner: torch.Tensor, num_problems: int) -> torch.Tensor:
    """sum over a problem's rows and tokens of gy x^T: x [R, T, a], gy [R, T, b] -> [P, b, a].

    Rows arrive grouped by problem with K rows each (as `build_rollout_batch` lays them out): then it is one
    batched matmul over [P, K*T] tokens. Any other layout falls back to one matmul per problem.
    """
    a, b = x.shape[-1], gy.shape[-1]
    counts = torch.bincount(owner, minlength=num_problems)
    grouped = owner.numel() > 0 and bool((counts == counts[0]).all()) and bool((owner[1:] >= owner[:-1]).all())
    if grouped and counts.numel() == num_problems:
        return torch.bmm(gy.reshape(num_problems, -1, b).transpose(1, 2), x.reshape(num_problems, -1, a))
    out = torch.zeros(num_problems, b, a, dtype=x.dtype, device=x.device)
    for p in owner.unique().tolist():  # only the problems these rows belong to (a chunk may hold a few)
        rows = owner == p
        out[p] = gy[rows].reshape(-1, b).T @ x[rows].reshape(-1, a)
    return out


class Projector(Protocol):
    name: str

    def project_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """[..., in] layer inputs -> [..., a]"""

    def project_output(self, name: str, gy: torch.Tensor) -> torch.Tensor:
        """[..., out] output gradients -> [..., b]"""

    def layer_block(self, name: str, outer: torch.Tensor) -> torch.Tensor:
        """[P, b, a] per-problem sums of projected outer products -> [P, width] features of the layer"""

    def finalize(self, blocks: torch.Tensor) -> torch.Tensor:
        """[P, sum of widths] concatenated layer blocks -> the features"""


class ExactGradients:
    """Identity "projection": the full flattened per-problem weight gradients (for tests and reference runs)."""

    name = "exact"

    def project_input(self, name, x):
        return x.to(work_dtype(x))

    def project_output(self, name, gy):
        return gy.to(work_dtype(gy))

    def layer_block(self, name, outer):
        return outer.flatten(1)

    def finalize(self, blocks):
        return blocks


class DenseProjector(ExactGradients):
    """Rademacher JL projection of each layer's full per-problem gradient to `width_per_layer` dims."""

    name = "dense"

    def __init__(self, width_per_layer: int, seed: int, chunk_rows: int = 8192):
        self.width = width_per_layer
        self.seed = seed
        self.chunk_rows = chunk_rows  # rows of R generated at a time: bounds memory at chunk_rows * width floats

    def layer_block(self, name, outer):
        grads = outer.flatten(1)  # [P, out*in]
        out = torch.zeros(grads.shape[0], self.width, dtype=grads.dtype, device=grads.device)
        base = layer_seed(self.seed, name)
        for chunk, start in enumerate(range(0, grads.shape[1], self.chunk_rows)):
            block = grads[:, start : start + self.chunk_rows]
            out.addmm_(block, rademacher(block.shape[1], self.width, base + chunk).to(block.device, block.dtype))
        return out / math.sqrt(self.width)


class KroneckerProjector:
    """LoGra-style factored projection: k_in x k_out dims per layer, optionally re-projected to `output_width`."""

    name = "kronecker"

    def __init__(self, k_in: int, k_out: int, seed: int, output_width: int | None = None):
        self.k_in, self.k_out, self.seed = k_in, k_out, seed
        self.output_width = output_width
        self._factors: dict[tuple, torch.Tensor] = {}  # (layer, side, device, dtype) -> factor
        self._second: dict[int, torch.Tensor] = {}  # by input width: regenerating it per batch dominated small runs

    def factor(self, name: str, side: str, dim: int, like: torch.Tensor) -> torch.Tensor:
        """P_in [dim, k_in] (side "in") or P_out [dim, k_out] (side "out") of layer `name`, on `like`'s device."""
        key = (name, side, like.device, work_dtype(like))
        if key not in self._factors:
            k, offset = (self.k_in, 0) if side == "in" else (self.k_out, 1)
            matrix = rademacher(dim, k, layer_seed(self.seed, name) + offset) / math.sqrt(k)
            self._factors[key] = matrix.to(device=like.device, dtype=work_dtype(like))
        return self._factors[key]

    def project_input(self, name, x):
        return x.to(work_dtype(x)) @ self.factor(name, "in", x.shape[-1], x)

    def project_output(self, name, gy):
        return gy.to(work_dtype(gy)) @ self.factor(name, "out", gy.shape[-1], gy)

    def layer_block(self, name, outer):
        return outer.flatten(1)

    def finalize(self, blocks):
        if self.output_width is None:
            return blocks
        width = blocks.shape[1]
        if width not in self._second:
            second = rademacher(width, self.output_width, layer_seed(self.seed, "__output__"))
            self._second[width] = second / math.sqrt(self.output_width)
        return blocks @ self._second[width].to(blocks.device, blocks.dtype)
