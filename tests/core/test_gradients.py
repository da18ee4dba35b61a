import math

import polars as pl
import pytest
import torch

from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.policy.rollouts import sample_rollouts
from learnalign_pipeline.core.selection.capture import linear_layers
from learnalign_pipeline.core.selection.features import ExactGradients, gradient_features, loop_gradients
from learnalign_pipeline.core.selection.projection import DenseProjector, KroneckerProjector, per_problem_outer
from learnalign_pipeline.core.task.verify import NumericVerifier
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.grpo import to_rollout_batch, token_logprobs


@pytest.fixture()
def rollouts(model, tokenizer, problems):
    frame = sample_rollouts(
        TransformersBackend(model, tokenizer), problems, SamplingSpec(4, 1.0, 1.0, 8), NumericVerifier(), "qa", 0
    )
    # A random policy rarely answers right: give every group mixed rewards so every advantage is non-zero.
    return frame.with_columns((pl.col("sample_index") % 2).cast(pl.Float32).alias("reward"))


def test_batched_gradients_equal_one_backward_per_problem(model, tokenizer, problems, rollouts):
    reference = build_reference(model)
    config = GRPOConfig(beta=0.04).loss(32)
    batched = gradient_features(
        model, reference, tokenizer, problems, rollouts, config, ExactGradients(), "qa", problems_per_batch=5
    )
    assert "lm_head" not in linear_layers(model)  # tied to the embedding: not an outer product, left out
    loop = loop_gradients(model, reference, tokenizer, problems, rollouts, config)
    assert loop.norm() > 0
    relative = ((batched.features - loop).norm() / loop.norm()).item()
    assert relative < 1e-5, relative
    assert batched.problem_ids == problems["problem_id"].to_list()


def test_self_reference_features_equal_those_against_a_frozen_copy(model, tokenizer, problems, rollouts):
    """reference="stage_start" scores a problem against the policy being scored: the KL is taken against the
    policy's own detached log-probs (no second forward), which equals training's frozen copy of its start."""
    import copy

    config = GRPOConfig(beta=0.5).loss(32)  # a large beta: any KL-gradient difference would show
    own = gradient_features(
        model, model, tokenizer, problems, rollouts, config, ExactGradients(), "qa", problems_per_batch=4
    )
    frozen = copy.deepcopy(model)
    loop = loop_gradients(model, frozen, tokenizer, problems, rollouts, config)
    assert ((own.features - loop).norm() / loop.norm()).item() < 1e-5
    shifted = loop_gradients(model, build_reference(model), tokenizer, problems, rollouts, config)
    assert ((shifted - loop).norm() / loop.norm()).item() > 1e-4  # a different reference does change the features


def build_reference(model):
    import copy

    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return reference


def test_gradient_scopes(model):
    all_linear = linear_layers(model, "all_linear")
    attention = linear_layers(model, "attention")
    last = linear_layers(model, "last_blocks", last_blocks=1)
    assert set(attention) < set(all_linear) and all(".self_attn." in n for n in attention)
    assert set(last) < set(all_linear) and all(".layers.1." in n for n in last)
    with pytest.raises(ValueError, match="unknown gradient scope"):
        linear_layers(model, "everything")  # type: ignore[arg-type]


def _random_layer_inputs(problems=24, rows_per_problem=3, tokens=5, d_in=48, d_out=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    owner = torch.arange(problems).repeat_interleave(rows_per_problem)
    x = torch.randn(problems * rows_per_problem, tokens, d_in, generator=gen, dtype=torch.float64)
    gy = torch.randn(problems * rows_per_problem, tokens, d_out, generator=gen, dtype=torch.float64)
    return x.float(), gy.float(), owner, problems


def _gram_error(projected: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest |<Pa, Pb> - <a, b>| / (|a| |b|) over all pairs: the JL distortion of inner products."""
    norms = exact.norm(dim=1)
    scale = norms[:, None] * norms[None, :]
    return ((projected @ projected.T - exact @ exact.T) / scale).abs().max().item()


@pytest.mark.parametrize(
    "projector, width",
    [(DenseProjector(width_per_layer=1024, seed=3, chunk_rows=500), 1024), (KroneckerProjector(32, 32, seed=3), 1024)],
)
def test_projection_preserves_inner_products_within_jl_bounds(projector, width):
    x, gy, owner, problems = _random_layer_inputs()
    exact = per_problem_outer(x, gy, owner, problems).flatten(1)
    projected = projector.finalize(projector.project_layer("layer", x, gy, owner, problems))
    assert projected.shape == (problems, width)
    # Rademacher JL: each inner product has standard deviation <= sqrt(2/k) |a||b|. Over 300 pairs a
    # 6-sigma bound holds with overwhelming probability; the Kronecker sketch's variance is about twice that.
    sigma = math.sqrt(2 / width) * (math.sqrt(2) if projector.name == "kronecker" else 1.0)
    error = _gram_error(projected, exact)
    assert error < 6 * sigma, (error, 6 * sigma)
    # Not vacuous: a projection with the wrong scale or correlated signs breaks the bound.
    assert _gram_error(2 * projected, exact) > 6 * sigma


def test_projection_is_deterministic_per_seed_and_layer():
    x, gy, owner, problems = _random_layer_inputs()
    a = KroneckerProjector(8, 8, seed=1).project_layer("q", x, gy, owner, problems)
    assert torch.equal(a, KroneckerProjector(8, 8, seed=1).project_layer("q", x, gy, owner, problems))
    assert not torch.equal(a, KroneckerProjector(8, 8, seed=2).project_layer("q", x, gy, owner, problems))
    assert not torch.equal(a, KroneckerProjector(8, 8, seed=1).project_layer("k", x, gy, owner, problems))


def test_kronecker_equals_dense_projection_by_the_kronecker_product():
    """P_out^T dW P_in is vec(dW) projected by P_in (x) P_out: the factored path is an exact projection."""
    x, gy, owner, problems = _random_layer_inputs(problems=4, d_in=6, d_out=5)
    projector = KroneckerProjector(3, 2, seed=0)
    factored = projector.project_layer("l", x.double(), gy.double(), owner, problems)
    p_in, p_out = (f.double() for f in projector._factor("l", 6, 5))
    dense = torch.stack(
        [(p_out.T @ g @ p_in).flatten() for g in per_problem_outer(x.double(), gy.double(), owner, problems)]
    )
    torch.testing.assert_close(factored, dense.float(), rtol=1e-5, atol=1e-6)


def test_shared_prompt_logprobs_equal_the_plain_forward(model, tokenizer, problems, rollouts):
    from learnalign_pipeline.core.selection.capture import _shared_prefix_layout, _shared_prefix_logprobs

    batch = to_rollout_batch(problems, rollouts, tokenizer, "qa", GRPOConfig().loss(32))
    layout = _shared_prefix_layout(batch)
    assert layout is not None and layout.prompt_ids.shape[0] == problems.height and layout.samples == 4
    with torch.no_grad():
        shared = _shared_prefix_logprobs(model, batch, layout, 1.0)
        plain = token_logprobs(model, batch)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(shared[mask], plain[mask], rtol=1e-5, atol=1e-5)
    assert torch.all(shared[~mask] == 0)


def test_batched_gradients_stay_exact_without_the_shared_prompt_layout(model, tokenizer, problems, rollouts):
    """A rollout with no completion tokens disables the shared-prompt forward: the plain batched path is exact too."""
    from learnalign_pipeline.core.selection.capture import _shared_prefix_layout

    first = problems["problem_id"][0]
    empty = (pl.col("problem_id") == first) & (pl.col("sample_index") == 3)
    odd = rollouts.with_columns(
        pl.when(empty).then(pl.lit([], dtype=pl.List(pl.Int32))).otherwise(pl.col("token_ids")).alias("token_ids")
    )
    config = GRPOConfig(beta=0.04).loss(32)
    assert _shared_prefix_layout(to_rollout_batch(problems, odd, tokenizer, "qa", GRPOConfig().loss(32))) is None
    reference = build_reference(model)
    batched = gradient_features(
        model, reference, tokenizer, problems, odd, config, ExactGradients(), "qa", problems_per_batch=7
    )
    loop = loop_gradients(model, reference, tokenizer, problems, odd, config)
    assert ((batched.features - loop).norm() / loop.norm()).item() < 1e-5


def test_per_problem_outer_takes_any_row_order():
    x, gy, owner, problems = _random_layer_inputs(problems=5, rows_per_problem=3)
    grouped = per_problem_outer(x, gy, owner, problems)  # one batched matmul
    order = torch.randperm(owner.numel(), generator=torch.Generator().manual_seed(0))
    shuffled = per_problem_outer(x[order], gy[order], owner[order], problems)  # one matmul per problem
    torch.testing.assert_close(shuffled, grouped, rtol=1e-5, atol=1e-5)
    rows = owner == 2
    torch.testing.assert_close(grouped[2], gy[rows].reshape(-1, gy.shape[-1]).T @ x[rows].reshape(-1, x.shape[-1]))


def test_second_projection_is_cached_and_unchanged():
    projector = KroneckerProjector(4, 4, seed=5, output_width=8)
    blocks = torch.randn(3, 40)
    first = projector.finalize(blocks)
    assert len(projector._second) == 1
    torch.testing.assert_close(projector.finalize(blocks), first)
    torch.testing.assert_close(KroneckerProjector(4, 4, seed=5, output_width=8).finalize(blocks), first)
    assert first.shape == (3, 8)
