"""LearnAlign scoring: learnability V = p(1-p) and the learnability-weighted gradient alignment.

LearnAlign defines S_ij = V_i V_j cos(phi_i, phi_j) and ranks problems by the row average
Avg_i = (1/n) sum_j S_ij. With unit features u_i = phi_i / |phi_i| and mu = (1/n) sum_j V_j u_j this is
exactly Avg_i = V_i <u_i, mu>: O(n d) time and memory, no n x n matrix.
"""

from __future__ import annotations

import torch


def learnability(success_rate: torch.Tensor) -> torch.Tensor:
    """V = p (1 - p): 0 for problems always or never solved, 0.25 at p = 1/2."""
    return success_rate * (1 - success_rate)


# GradAlign's released code normalizes a gradient as g / (|g| + 1e-5): a gradient that is zero but for round-off
# (identical completions: the advantages sum to 0) scores about 0 instead of becoming a unit vector.
GRADALIGN_NORM_FLOOR = 1e-5


def unit_rows(features: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows / (norm + floor), norms): unit length for real gradients, about 0 for rows not far above `floor`
    (round-off), exactly 0 for zero rows (FeatureConfig.norm_floor)."""
    norms = features.float().norm(dim=1)
    return features.float() / (norms + floor).unsqueeze(1), norms


def normalized(vector: torch.Tensor, floor: float) -> torch.Tensor:
    """One vector / (norm + floor), the same rule as `unit_rows`."""
    return vector / (vector.norm() + floor)


def carries_gradient(norms: torch.Tensor, floor: float) -> torch.Tensor:
    """Which rows have a gradient above the norm floor (the others are zero or round-off and score about 0)."""
    return norms > floor


def learnalign_scores(
    weights: torch.Tensor, unit_features: torch.Tensor, include_self: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Avg_i, <u_i, mu>) for weights V [n] and unit features [n, d].

    include_self=False drops the j = i term V_i^2 |u_i|^2 / n from each row average.
    """
    n = weights.shape[0]
    u = unit_features.float()
    mu = (weights.float().unsqueeze(1) * u).sum(0) / n
    alignment = u @ mu
    scores = weights.float() * alignment
    if not include_self:
        scores = scores - weights.float() ** 2 * (u * u).sum(1) / n
    return scores, alignment


def alignment_matrix(weights: torch.Tensor, unit_features: torch.Tensor) -> torch.Tensor:
    """The explicit n x n matrix S_ij = V_i V_j cos(phi_i, phi_j); only for small n (inspection, tests)."""
    v = weights.float().unsqueeze(1) * unit_features.float()
    return v @ v.T


def top_n(scores: torch.Tensor, keys: list[str], n: int) -> list[int]:
    """Indices of the n highest scores; ties go to the smaller key, so the result never depends on row order."""
    if n < 0:
        raise ValueError("n must be >= 0")
    order = sorted(range(len(keys)), key=lambda i: (-float(scores[i]), keys[i]))
    return order[:n]
