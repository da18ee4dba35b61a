import copy

import pytest
import torch

from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.grpo import (
    build_rollout_batch,
    group_advantages,
    per_problem_loss,
    token_logprobs,
)


def _batch(tokenizer, rewards):
    gen = torch.Generator().manual_seed(1)
    prompts = [[5, 9, 12, 7], [8, 3, 11]]
    completions = [
        [torch.randint(4, 200, (n,), generator=gen).tolist() + [tokenizer.eos_token_id] for n in (3, 5, 2)]
        for _ in prompts
    ]
    return build_rollout_batch(
        prompts, completions, group_advantages(torch.tensor(rewards), scale=True), tokenizer.pad_token_id
    )


def test_group_advantages_zero_for_uniform_groups():
    adv = group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]), scale=True)
    assert adv[0].abs().max() == 0
    assert adv[1, 1] > 0 > adv[1, 0]
    assert torch.allclose(group_advantages(torch.tensor([[0.0, 1.0]]), scale=False), torch.tensor([[-0.5, 0.5]]))


@pytest.fixture()
def float64_norms(monkeypatch):
    """Qwen2's RMSNorm computes in float32 whatever the model dtype; a float64 gradient check needs float64 there."""
    from transformers.models.qwen2 import modeling_qwen2

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    monkeypatch.setattr(modeling_qwen2.Qwen2RMSNorm, "forward", forward)


@pytest.mark.parametrize("aggregation", ["sample_mean", "token_mean", "constant"])
def test_loss_gradient_matches_finite_differences(model, tokenizer, aggregation, float64_norms):
    """Central differences of the GRPO loss (clipping, KL, every aggregation) agree with autograd, in float64."""
    policy = model.double()
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.02 * torch.randn_like(p))  # a reference different from the policy, so the KL term is active
    batch = _batch(tokenizer, [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    config = GRPOConfig(beta=0.1, clip_epsilon=0.2, aggregation=aggregation).loss(6)
    with torch.no_grad():
        ref_logp = token_logprobs(reference, batch)
        # The sampling policy differs from the current one, so ratios leave 1 and clipping engages for some tokens.
        old_logp = token_logprobs(policy, batch) + 0.3 * torch.randn(batch.completion_mask.shape, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return per_problem_loss(
            token_logprobs(policy, batch), batch, config, old_logp=old_logp, ref_logp=ref_logp
        ).sum()

    params = [p for p in policy.parameters() if p.requires_grad]
    policy.zero_grad()
    loss().backward()
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((p.grad * d).sum() for p, d in zip(params, direction))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        plus = loss()
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        minus = loss()
        for p, d in zip(params, direction):
            p.add_(eps * d)
    numeric = (plus - minus) / (2 * eps)
    assert abs(float(analytic)) > 1e-6  # the check below must not pass vacuously
    assert float(numeric) == pytest.approx(float(analytic), rel=1e-6)


def test_per_problem_losses_are_separable(model, tokenizer):
    """Each problem's loss depends only on its own rows: batched per-problem gradients rely on this."""
    batch = _batch(tokenizer, [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    config = GRPOConfig(beta=0.0).loss(32)
    together = per_problem_loss(token_logprobs(model, batch), batch, config)
    rows = batch.problem_index == 1
    alone = _batch(tokenizer, [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    alone.input_ids, alone.attention_mask, alone.completion_mask = (
        batch.input_ids[rows],
        batch.attention_mask[rows],
        batch.completion_mask[rows],
    )
    alone.advantages, alone.problem_index, alone.num_problems = (
        batch.advantages[rows],
        torch.zeros(int(rows.sum()), dtype=torch.long),
        1,
    )
    torch.testing.assert_close(
        per_problem_loss(token_logprobs(model, alone), alone, config)[0], together[1], rtol=1e-5, atol=1e-7
    )


def test_beta_needs_reference_logprobs(model, tokenizer):
    batch = _batch(tokenizer, [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="reference"):
        per_problem_loss(token_logprobs(model, batch), batch, GRPOConfig(beta=0.1).loss(32))
