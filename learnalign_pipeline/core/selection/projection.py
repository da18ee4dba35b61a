"""Seeded random projections of per-problem linear-layer gradients, never materializing the full matrix.

A linear layer's per-problem weight gradient is a sum of outer products over that problem's tokens,
dW_p = sum_t gy_t x_t^T (gy: gradient at the layer output, x: layer input). Two projections consume the
(x, gy) pairs of a layer and return a [P, width] block per layer:

* `DenseProjector` (the LESS/TRAK reference): forms dW_p, then multiplies by a Rademacher matrix
  R [out*in, k] / sqrt(k), regenerated chunk by chunk from a per-layer seed so that only a chunk is in memory.
* `KroneckerProjector` (LoGra): projects inputs and output gradients first, x P_in and gy P_out, and forms the
  per-problem outer product of the small factors. This equals projecting vec(dW_p) by P_out (x) P_in, but costs
  O(T (in k_in + out k_out)) per layer instead of O(out in k). An optional second Rademacher projection maps
  the concatenated layer blocks to a fixed width.

All random matrices come from CPU `torch.Generator`s seeded by (seed, layer name), so the same seed gives the
same features on any device.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from ..storage.hashing import hash_int


def layer_seed(seed: int, name: str) -> int:
    return hash_int(seed, name, 7)


def rademacher(rows: int, cols: int, seed: int) -> torch.Tensor:
    """[rows, cols] matrix of +-1 (float32) from a CPU generator (identical on every machine)."""
    bits = torch.randint(0, 2, (rows, cols), dtype=torch.int8, generator=torch.Generator().manual_seed(seed))
    return bits.to(torch.float32).mul_(2.0).sub_(1.0)


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
    for p in range(num_problems):
        rows = owner == p
        out[p] = gy[rows].reshape(-1, b).T @ x[rows].reshape(-1, a)
    return out


class Projector(Protocol):
    name: str

    def project_layer(
        self, name: str, x: torch.Tensor, gy: torch.Tensor, owner: torch.Tensor, num_problems: int
    ) -> torch.Tensor: ...

    def finalize(self, blocks: torch.Tensor) -> torch.Tensor: ...


class DenseProjector:
    """Rademacher JL projection of each layer's full per-problem gradient to `width_per_layer` dims."""

    name = "dense"

    def __init__(self, width_per_layer: int, seed: int, chunk_rows: int = 8192):
        self.width = width_per_layer
        self.seed = seed
        self.chunk_rows = chunk_rows  # rows of R generated at a time: bounds memory at chunk_rows * width floats

    def project_layer(self, name, x, gy, owner, num_problems):
        grads = per_problem_outer(x.float(), gy.float(), owner, num_problems).flatten(1)  # [P, out*in]
        out = torch.zeros(num_problems, self.width)
        base = layer_seed(self.seed, name)
        for chunk, start in enumerate(range(0, grads.shape[1], self.chunk_rows)):
            block = grads[:, start : start + self.chunk_rows]
            out.addmm_(block, rademacher(block.shape[1], self.width, base + chunk))
        return out / math.sqrt(self.width)

    def finalize(self, blocks):
        return blocks


class KroneckerProjector:
    """LoGra-style factored projection: k_in x k_out dims per layer, optionally re-projected to `output_width`."""

    name = "kronecker"

    def __init__(self, k_in: int, k_out: int, seed: int, output_width: int | None = None):
        self.k_in, self.k_out, self.seed = k_in, k_out, seed
        self.output_width = output_width
        self._factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._second: dict[int, torch.Tensor] = {}  # by input width: regenerating it per batch dominated small runs

    def _factor(self, name: str, d_in: int, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._factors:
            base = layer_seed(self.seed, name)
            p_in = rademacher(d_in, self.k_in, base) / math.sqrt(self.k_in)
            p_out = rademacher(d_out, self.k_out, base + 1) / math.sqrt(self.k_out)
            self._factors[name] = (p_in, p_out)
        return self._factors[name]

    def project_layer(self, name, x, gy, owner, num_problems):
        p_in, p_out = self._factor(name, x.shape[-1], gy.shape[-1])
        return per_problem_outer(x.float() @ p_in, gy.float() @ p_out, owner, num_problems).flatten(1)

    def finalize(self, blocks):
        if self.output_width is None:
            return blocks
        width = blocks.shape[1]
        if width not in self._second:
            second = rademacher(width, self.output_width, layer_seed(self.seed, "__output__"))
            self._second[width] = second / math.sqrt(self.output_width)
        return blocks @ self._second[width].to(blocks.device)
