import torch

from learnalign_pipeline.core.selection.config import FeatureConfig
from learnalign_pipeline.core.selection.scoring import (
    alignment_matrix,
    learnability,
    learnalign_scores,
    top_n,
    unit_rows,
)


def test_row_average_in_o_nd_equals_explicit_matrix_mean():
    gen = torch.Generator().manual_seed(0)
    n, d = 37, 64
    features = torch.randn(n, d, generator=gen, dtype=torch.float64)
    features[3] = 0  # a zero-variance problem: no gradient
    p = torch.rand(n, generator=gen, dtype=torch.float64)
    p[5] = 1.0
    weights = learnability(p)
    unit, _ = unit_rows(features, FeatureConfig().norm_floor)
    unit = unit.double()
    explicit = alignment_matrix(weights, unit).double()
    scores, _ = learnalign_scores(weights, unit, include_self=True)
    torch.testing.assert_close(scores.double(), explicit.mean(dim=1), rtol=1e-5, atol=1e-7)
    without_self, _ = learnalign_scores(weights, unit, include_self=False)
    off_diagonal = (explicit.sum(dim=1) - explicit.diagonal()) / n
    torch.testing.assert_close(without_self.double(), off_diagonal, rtol=1e-5, atol=1e-7)
    assert scores[3] == 0 and scores[5] == 0


def test_learnability_peaks_at_one_half():
    v = learnability(torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert v.tolist() == [0.0, 0.1875, 0.25, 0.0]


def test_top_n_breaks_ties_by_key_independent_of_row_order():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.1])
    keys = ["d", "a", "b", "c"]
    assert [keys[i] for i in top_n(scores, keys, 3)] == ["a", "b", "d"]
    perm = [3, 2, 1, 0]
    assert [[keys[j] for j in perm][i] for i in top_n(scores[perm], [keys[j] for j in perm], 3)] == ["a", "b", "d"]


def test_unit_rows_keeps_zero_rows_zero():
    unit, norms = unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), FeatureConfig().norm_floor)
    assert torch.allclose(unit, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    assert norms.tolist() == [5.0, 0.0]


def test_a_round_off_gradient_scores_about_zero_not_as_a_unit_vector():
    """GradAlign's released code divides by |g| + 1e-5: a gradient that is zero but for round-off (~1e-9, identical
    completions) stays about 0 instead of becoming a unit vector with a random-looking direction."""
    floor = FeatureConfig().norm_floor
    assert floor == 1e-5
    unit, norms = unit_rows(torch.tensor([[3e-9, -1e-9, 2e-9], [0.3, 0.4, 0.0]]), floor)
    assert float(unit[0].norm()) < 1e-3 and abs(float(unit[1].norm()) - 1) < 1e-4
