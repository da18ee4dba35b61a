"""No tensor is created off-device: the core paths run with `meta` as torch's default device while the model and
its inputs live on the CPU. A factory call without an explicit device (torch.zeros(n), torch.arange(n), ...) then
makes a meta tensor, and the first operation mixing it with the CPU tensors fails. On a GPU the same omission would
put a tensor on the CPU next to CUDA ones."""

import contextlib

import polars as pl
import pytest
import torch

from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.policy.rollouts import sample_rollouts
from learnalign_pipeline.core.selection.features import ExactGradients, gradient_features
from learnalign_pipeline.core.selection.projection import KroneckerProjector
from learnalign_pipeline.core.task.prompts import PromptFormat
from learnalign_pipeline.core.task.verify import NumericVerifier
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.grpo import per_problem_loss, to_rollout_batch, token_logprobs


@contextlib.contextmanager
def meta_default_device():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def test_the_audit_catches_a_factory_call_without_a_device():
    with meta_default_device(), pytest.raises((RuntimeError, NotImplementedError)):
        torch.zeros(3).index_add(0, torch.tensor([0, 1], device="cpu"), torch.ones(2, device="cpu"))


def test_generation_features_and_loss_create_nothing_off_device(qwen_model, qwen_tokenizer, problems):
    model, tok = qwen_model(tied=False), qwen_tokenizer  # built on the CPU, before the audit starts
    with meta_default_device():
        _generate_score_and_differentiate(model, tok, problems)


def _generate_score_and_differentiate(model, tok, problems):
    fmt = PromptFormat("lm_eval_gsm8k", chat=True)
    rollouts = sample_rollouts(
        TransformersBackend(model, tok), problems[:3], SamplingSpec(2, 1.0, 0.9, 6), NumericVerifier(), fmt, 0
    )
    rollouts = rollouts.with_columns((pl.col("sample_index") % 2).cast(pl.Float32).alias("reward"))
    loss = GRPOConfig(beta=0.04).loss(6)
    for projector in (KroneckerProjector(4, 4, seed=0), ExactGradients()):
        result = gradient_features(
            model,
            model,
            tok,
            problems[:3],
            rollouts,
            loss,
            projector,
            fmt,
            checkpointing=True,
            memory_budget_bytes=1 << 20,
        )
        assert result.features.device.type == "cpu" and torch.isfinite(result.features).all()
    batch = to_rollout_batch(problems[:3], rollouts, tok, fmt, loss)
    logp = token_logprobs(model, batch)
    assert per_problem_loss(logp, batch, loss, ref_logp=logp.detach()).device.type == "cpu"
