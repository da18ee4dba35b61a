"""The one GRPO loss. The trainer minimizes it and the gradient-feature stage differentiates it per problem, so
the direction a problem is scored by is exactly the direction training would move on it.

Shapes: R rollouts (rows) belonging to P problems; T tokens per row (prompt + completion, right-padded so that
positions match generation). Every aggregation below normalizes a problem's loss by quantities of that problem
alone, which makes sum_p loss_p separable: the gradient of the sum restricted to problem p's rows is exactly
grad loss_p. Batched per-problem gradients rely on this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from ..task.prompts import PromptFormat, encode_prompt, pad_token_id, render

if TYPE_CHECKING:  # polars only where tables are read: the tensor code runs where polars is not installed
    import polars as pl

Aggregation = Literal["sample_mean", "token_mean", "constant"]


@dataclass(frozen=True)
class GRPOLossConfig:
    """The loss's parameters (a value object; `config.GRPOConfig` documents them and owns their defaults)."""

    beta: float  # weight of the k3 KL estimate against the reference policy (0 disables it)
    clip_epsilon: float  # PPO clip range for the importance ratio
    scale_rewards: bool  # divide advantages by the group's reward std (GRPO); False gives Dr. GRPO
    advantage_eps: float  # added to the std before dividing
    aggregation: Aggregation  # sample_mean: original GRPO; token_mean; constant: Dr. GRPO
    max_completion_tokens: int  # normalizer for "constant" aggregation


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # [R, T] prompt then completion, right-padded
    attention_mask: torch.Tensor  # [R, T]
    completion_mask: torch.Tensor  # [R, T-1] 1 where target token t+1 is a completion token
    problem_index: torch.Tensor  # [R] which problem (0..P-1) each row samples
    advantages: torch.Tensor  # [R]
    num_problems: int

    def to(self, device) -> RolloutBatch:
        """The batch on `device` (batches are built on the CPU, once, then moved)."""
        tensors = ("input_ids", "attention_mask", "completion_mask", "problem_index", "advantages")
        return RolloutBatch(**{f: getattr(self, f).to(device) for f in tensors}, num_problems=self.num_problems)


def group_advantages(rewards: torch.Tensor, scale: bool, eps: float = 1e-4) -> torch.Tensor:
    """[P, K] rewards -> [P, K] advantages; a group whose rewards are all equal gets exactly zero."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centered
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(centered[:, :1])
    return centered / (std + eps)


def build_rollout_batch(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[Sequence[int]]],
    advantages: torch.Tensor,
    pad_id: int,
) -> RolloutBatch:
    """Tensors for P problems: prompt_ids[p] and its completions completion_ids[p][k], advantages [P, K]."""
    rows, prompt_lens, owners, row_adv = [], [], [], []
    for p, (prompt, completions) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        for k, completion in enumerate(completions):
            rows.append(list(prompt) + list(completion))
            prompt_lens.append(len(prompt))
            owners.append(p)
            row_adv.append(float(advantages[p, k]))
    width = max(len(r) for r in rows)
    cpu = torch.device("cpu")  # built on the CPU, then moved once (`RolloutBatch.to`)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=cpu)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long, device=cpu)
    completion_mask = torch.zeros((len(rows), width - 1), dtype=torch.float32, device=cpu)
    for i, (row, plen) in enumerate(zip(rows, prompt_lens)):
        input_ids[i, : len(row)] = torch.tensor(row, device=cpu)
        attention_mask[i, : len(row)] = 1
        completion_mask[i, plen - 1 : len(row) - 1] = 1.0  # logits at t predict token t+1
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        problem_index=torch.tensor(owners, dtype=torch.long, device=cpu),
        advantages=torch.tensor(row_adv, dtype=torch.float32, device=cpu),
        num_problems=len(prompt_ids),
    )


def to_rollout_batch(
    problems: pl.DataFrame, rollouts: pl.DataFrame, tokenizer, template: str | PromptFormat, loss: GRPOLossConfig
) -> RolloutBatch:
    """The GRPO tensors for `problems` (in their order) from their rows in `rollouts`, advantages as `loss` scales them.

    Both the trainer and the gradient-feature stage build their batches here, so they see identical
    token ids, masks and advantages for the same rollouts.
    """
    import polars as pl

    by_problem = rollouts.group_by("problem_id", maintain_order=True).agg(
        pl.col("token_ids").sort_by("sample_index"), pl.col("reward").sort_by("sample_index")
    )
    order = problems.select("problem_id", "prompt").join(by_problem, on="problem_id", how="left", maintain_order="left")
    if order["token_ids"].null_count():
        missing = order.filter(pl.col("token_ids").is_null())["problem_id"].head(3).to_list()
        raise ValueError(f"rollouts are missing for {order['token_ids'].null_count()} problems, e.g. {missing}")
    prompt_ids = [encode_prompt(tokenizer, render(template, p, tokenizer)) for p in order["prompt"].to_list()]
    rewards = torch.tensor(order["reward"].to_list(), dtype=torch.float32, device="cpu")
    advantages = group_advantages(rewards, scale=loss.scale_rewards, eps=loss.advantage_eps)
    return build_rollout_batch(prompt_ids, order["token_ids"].to_list(), advantages, pad_token_id(tokenizer))


def token_logprobs(model, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
    """[R, T-1] log-probability of each next token under `model` (sampling temperature applied).

    Columns before the first completion target in the batch are 0: their logits are never computed, since
    the vocabulary projection and log-softmax at prompt-only positions are wasted work (the loss masks them).
    """
    width = batch.completion_mask.shape[1]
    targeted = batch.completion_mask.any(dim=0).nonzero()
    first = int(targeted[0]) if targeted.numel() else width
    # no KV cache: nothing is generated here, and building one costs a copy of every layer's keys and values
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
        logits_to_keep=width + 1 - first,
    )
    logits = out.logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half-precision models: log-softmax in fp32
    if temperature != 1.0:
        logits = logits / temperature
    targets = batch.input_ids[:, first + 1 :].unsqueeze(-1)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)
    return torch.nn.functional.pad(logp, (first, 0))


def per_problem_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    config: GRPOLossConfig,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
) -> torch.Tensor:
    """[P] GRPO loss of each problem (to minimize). `old_logp=None` means on-policy: ratio 1, clipping inert."""
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    adv = batch.advantages.unsqueeze(1)
    eps = config.clip_epsilon
    token_loss = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)
    if config.beta:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probabilities")
        log_ratio = ref_logp - logp
        token_loss = token_loss + config.beta * (torch.exp(log_ratio) - log_ratio - 1)
    mask = batch.completion_mask.to(token_loss.dtype)
    row_sum = (token_loss * mask).sum(dim=1)
    row_tokens = mask.sum(dim=1)
    owner = batch.problem_index

    def per_problem(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(batch.num_problems, dtype=values.dtype, device=values.device).index_add(0, owner, values)

    rows_per_problem = per_problem(torch.ones_like(row_sum))
    if config.aggregation == "sample_mean":
        return per_problem(row_sum / row_tokens.clamp(min=1)) / rows_per_problem.clamp(min=1)
    problem_sum = per_problem(row_sum)
    if config.aggregation == "token_mean":
        return problem_sum / per_problem(row_tokens).clamp(min=1)
    if config.aggregation == "constant":
        return problem_sum / (rows_per_problem.clamp(min=1) * config.max_completion_tokens)
    raise ValueError(f"unknown aggregation {config.aggregation!r}")
