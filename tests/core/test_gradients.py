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


def _project(projector, name, x, gy, owner, problems):
    """What the capture hooks do for one layer: project both sides, sum per-problem outer products, make the block."""
    outer = per_problem_outer(projector.project_input(name, x), projector.project_output(name, gy), owner, problems)
    return projector.layer_block(name, outer)


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
    projected = projector.finalize(_project(projector, "layer", x, gy, owner, problems))
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
    a = _project(KroneckerProjector(8, 8, seed=1), "q", x, gy, owner, problems)
    assert torch.equal(a, _project(KroneckerProjector(8, 8, seed=1), "q", x, gy, owner, problems))
    assert not torch.equal(a, _project(KroneckerProjector(8, 8, seed=2), "q", x, gy, owner, problems))
    assert not torch.equal(a, _project(KroneckerProjector(8, 8, seed=1), "k", x, gy, owner, problems))


def test_kronecker_equals_dense_projection_by_the_kronecker_product():
    """P_out^T dW P_in is vec(dW) projected by P_in (x) P_out: the factored path is an exact projection."""
    x, gy, owner, problems = _random_layer_inputs(problems=4, d_in=6, d_out=5)
    projector = KroneckerProjector(3, 2, seed=0)
    factored = _project(projector, "l", x.double(), gy.double(), owner, problems)
    p_in, p_out = projector.factor("l", "in", 6, x.double()), projector.factor("l", "out", 5, x.double())
    dense = torch.stack(
        [(p_out.T @ g @ p_in).flatten() for g in per_problem_outer(x.double(), gy.double(), owner, problems)]
    )
    torch.testing.assert_close(factored, dense, rtol=1e-12, atol=1e-12)


def test_shared_prompt_logprobs_equal_the_plain_forward(model, tokenizer, problems, rollouts):
    from learnalign_pipeline.core.selection.capture import _shared_prefix_layout, sequence_logprobs

    batch = to_rollout_batch(problems, rollouts, tokenizer, "qa", GRPOConfig().loss(32))
    layout = _shared_prefix_layout(batch)
    assert layout is not None and layout.prompt_ids.shape[0] == problems.height and layout.samples == 4
    with torch.no_grad():
        shared = sequence_logprobs(model, batch, layout, 1.0)
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


@pytest.fixture()
def qwen_rollouts(qwen_model, qwen_tokenizer, problems):
    """Chat-format rollouts of an untied Qwen-shaped policy, mixed rewards in every group."""
    from learnalign_pipeline.core.task.prompts import PromptFormat

    frame = sample_rollouts(
        TransformersBackend(qwen_model(), qwen_tokenizer),
        problems[:6],
        SamplingSpec(4, 1.0, 1.0, 8),
        NumericVerifier(),
        PromptFormat("lm_eval_gsm8k", chat=True),
        0,
    )
    return frame.with_columns((pl.col("sample_index") % 2).cast(pl.Float32).alias("reward"))


@pytest.mark.parametrize("tied", [False, True])
def test_untied_and_tied_heads_equal_the_per_problem_loop(qwen_model, qwen_tokenizer, problems, qwen_rollouts, tied):
    """An untied lm_head is a scored layer, run once on completion positions (it raised TypeError before)."""
    from learnalign_pipeline.core.task.prompts import PromptFormat

    model, fmt, config = qwen_model(tied=tied), PromptFormat("lm_eval_gsm8k", chat=True), GRPOConfig(beta=0.04).loss(8)
    reference = build_reference(model)
    assert ("lm_head" in linear_layers(model)) == (not tied)
    batched = gradient_features(
        model, reference, qwen_tokenizer, problems[:6], qwen_rollouts, config, ExactGradients(), fmt
    )
    loop = loop_gradients(model, reference, qwen_tokenizer, problems[:6], qwen_rollouts, config, fmt)
    assert ((batched.features - loop).norm() / loop.norm()).item() < 1e-5


def test_in_hook_projection_equals_capture_then_project(qwen_model, qwen_tokenizer, problems, qwen_rollouts):
    """float64: Kronecker features projected inside the hooks equal P_out^T dW_p P_in of the full per-problem
    gradients captured first (identity projection), layer by layer, lm_head included."""
    from learnalign_pipeline.core.task.prompts import PromptFormat

    model = qwen_model(tied=False).double()
    fmt, config = PromptFormat("lm_eval_gsm8k", chat=True), GRPOConfig(beta=0.04).loss(8)
    reference = build_reference(model)
    kron = KroneckerProjector(4, 3, seed=7)
    projected = gradient_features(model, reference, qwen_tokenizer, problems[:6], qwen_rollouts, config, kron, fmt)
    exact = gradient_features(
        model, reference, qwen_tokenizer, problems[:6], qwen_rollouts, config, ExactGradients(), fmt
    )
    blocks, offset = [], 0
    for name, layer in linear_layers(model).items():
        out_dim, in_dim = layer.weight.shape
        grads = exact.features[:, offset : offset + out_dim * in_dim].double().reshape(-1, out_dim, in_dim)
        offset += out_dim * in_dim
        like = grads
        p_in, p_out = kron.factor(name, "in", in_dim, like), kron.factor(name, "out", out_dim, like)
        blocks.append((p_out.T @ grads @ p_in).flatten(1))
    then_projected = torch.cat(blocks, dim=1)
    assert ((projected.features.double() - then_projected).norm() / then_projected.norm()).item() < 1e-6
    # (the features are returned as float32: 1e-6 is their rounding, not the method's)


def test_checkpointing_head_chunks_and_sub_batches_change_nothing(qwen_model, qwen_tokenizer, problems, qwen_rollouts):
    from learnalign_pipeline.core.selection.capture import capture_features
    from learnalign_pipeline.core.selection.memory import feature_memory, plan_sub_batches
    from learnalign_pipeline.core.task.prompts import PromptFormat

    model = qwen_model(tied=False).double()
    fmt, config = PromptFormat("lm_eval_gsm8k", chat=True), GRPOConfig(beta=0.04).loss(8)
    reference = build_reference(model)
    layers = linear_layers(model)
    batch = to_rollout_batch(problems[:6], qwen_rollouts, qwen_tokenizer, fmt, config)

    def captured(**options):
        return capture_features(model, reference, batch, config, layers, ExactGradients(), **options)

    whole = captured()
    assert torch.equal(captured(checkpointing=True), whole)  # recomputing the layers is exact
    chunked = captured(checkpointing=True, head_chunk_rows=5)  # the head in chunks cutting across problems
    assert ((chunked - whole).norm() / whole.norm()).item() < 1e-12

    def features(budget):
        return gradient_features(
            model,
            reference,
            qwen_tokenizer,
            problems[:6],
            qwen_rollouts,
            config,
            ExactGradients(),
            fmt,
            checkpointing=True,
            memory_budget_bytes=budget,
        ).features

    budget = 3 << 20  # about one problem's estimate: several sub-batches
    estimator = feature_memory(model, layers, ExactGradients(), None, True)
    groups, _ = plan_sub_batches([(60, 8)] * 6, 4, estimator, budget)
    assert len(groups) > 1
    split = features(budget)
    assert ((split - whole.float()).norm() / whole.norm()).item() < 1e-6  # float32 output
    assert torch.equal(split, features(budget))  # the split is deterministic


def test_memory_estimate_counts_what_autograd_saves(qwen_model, qwen_tokenizer):
    """The per-layer formula of core/selection/memory.py against exact accounting of the tensors autograd saves
    (deduplicated by storage), float32 and bfloat16 autocast."""
    from learnalign_pipeline.core.selection.memory import FeatureMemory, ModelShape

    model = qwen_model()
    for p in model.parameters():
        p.requires_grad_(False)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.requires_grad_())

    def saved_bytes(layers_run: int, autocast: bool) -> int:
        seen, total = set(), [0]

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen and ptr not in params:
                seen.add(ptr)
                total[0] += t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, 300, (4, 64))
        base = model.base_model
        kept = base.layers
        base.layers = kept[:layers_run]
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    base(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        finally:
            base.layers = kept
        return total[0]

    shape = ModelShape.of(model.config)
    for autocast in (False, True):
        weights = 2 * sum(p.numel() for p in model.base_model.layers[0].parameters()) if autocast else 0
        measured = (saved_bytes(2, autocast) - saved_bytes(1, autocast) - weights) / (4 * 64)
        estimate = FeatureMemory(shape, 0, 0, autocast_bf16=autocast).layer_bytes_per_token()
        assert abs(measured - estimate) / estimate < 0.02, (autocast, measured, estimate)
