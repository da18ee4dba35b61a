"""GRPO training loop (on-policy, one optimizer step per generation batch) and supervised pre-training.

Each GRPO step samples K completions for a batch of problems from the live policy, rewards them, and takes one
AdamW step on `per_problem_loss(...).mean()`. With one update per batch the sampling policy equals the policy
being updated, so the importance ratio is exactly 1 and the loss gradient is the plain policy gradient (plus KL).
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import polars as pl
import torch

from .generation import SamplingSpec, TransformersBackend
from .grpo import GRPOLossConfig, per_problem_loss, token_logprobs
from .prompts import PromptFormat
from .resume import ResumeDirectory, restore
from .rollouts import Verifier, sample_rollouts, to_rollout_batch


@dataclass(frozen=True)
class GRPOTrainConfig:
    steps: int = 40  # optimizer steps; each samples a fresh batch of problems
    problems_per_step: int = 32  # problems per batch (each with `sampling.num_samples` rollouts)
    sampling: SamplingSpec = field(default_factory=lambda: SamplingSpec(num_samples=8, temperature=1.0, max_new_tokens=24))
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    template: str | PromptFormat = "qa"
    seed: int = 0
    on_nonfinite: Literal["fail", "exclude"] = "fail"  # NaN/inf problem losses: raise naming them, or leave them out of the step


def _epoch_batches(ids: Sequence[int], batch_size: int, steps: int, seed: int):
    """`steps` batches walking through seeded permutations of `ids` epoch after epoch."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            epoch = list(ids)
            rng.shuffle(epoch)
            # A batch straddling two epochs must not hold a problem twice: defer the repeats to later in the epoch.
            pending = set(order)
            order.extend([i for i in epoch if i not in pending] + [i for i in epoch if i in pending])
        yield order[:batch_size]
        del order[:batch_size]


def train_grpo(
    model,
    tokenizer,
    problems: pl.DataFrame,
    verifier: Verifier,
    config: GRPOTrainConfig,
    log: Callable[[dict], None] | None = None,
    resume: ResumeDirectory | None = None,
    checkpoint_every: int = 0,
    on_rollouts: Callable[[int, pl.DataFrame], None] | None = None,
) -> list[dict]:
    """Train `model` in place on `problems`; the reference for the KL term is a frozen copy of the start.

    With `resume`, the full training state is saved there after every `checkpoint_every` steps, and training
    continues from the newest saved state it finds; `model` must then be the same start model, and the result
    is bitwise the one of an uninterrupted run (same thread count); `resume.resumed_from_step` says where it
    started. `on_rollouts(step, rollouts)` sees every step's rewarded rollouts (LIMR's per-problem accuracy
    trajectory).
    """
    if problems.height == 0:
        raise ValueError("GRPO needs at least one problem")
    torch.manual_seed(config.seed)
    ref_model = copy.deepcopy(model).eval() if config.loss.beta else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    backend = TransformersBackend(model, tokenizer)
    batch_size = min(config.problems_per_step, problems.height)
    history: list[dict] = []
    first_step = 0
    state = resume.latest(model.dtype) if resume is not None else None
    if state is not None:
        restore(state, model, optimizer)
        history, first_step = list(state.history), state.step
    for step, rows in enumerate(_epoch_batches(range(problems.height), batch_size, config.steps, config.seed)):
        if step < first_step:  # done before the restart; the batch generator is replayed to stay in sequence
            continue
        started = time.perf_counter()
        batch_problems = problems[rows]
        rollouts = sample_rollouts(
            backend, batch_problems, config.sampling, verifier, config.template, base_seed=config.seed * 1_000_003 + step
        )
        if on_rollouts:
            on_rollouts(step, rollouts)
        batch = to_rollout_batch(
            batch_problems, rollouts, tokenizer, config.template, config.loss.scale_rewards, config.loss.advantage_eps
        )
        model.train()
        logp = token_logprobs(model, batch, config.sampling.temperature or 1.0)
        ref_logp = None
        if ref_model is not None:
            with torch.no_grad():
                ref_logp = token_logprobs(ref_model, batch, config.sampling.temperature or 1.0)
        losses = per_problem_loss(logp, batch, config.loss, ref_logp=ref_logp)
        finite = torch.isfinite(losses)
        if not finite.all():
            bad = [batch_problems["problem_id"][i] for i in (~finite).nonzero().flatten().tolist()]
            if config.on_nonfinite == "fail":
                raise FloatingPointError(f"non-finite GRPO loss at step {step} for {len(bad)} problems, e.g. {bad[:5]}")
        loss = losses[finite].mean() if finite.any() else None
        optimizer.zero_grad(set_to_none=True)
        grad_norm = torch.tensor(0.0)
        if loss is not None:  # with every problem excluded the step is skipped, not taken on nothing
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if torch.isfinite(grad_norm):
                optimizer.step()
            elif config.on_nonfinite == "fail":
                raise FloatingPointError(f"non-finite gradient norm at step {step}")
        rates = rollouts.group_by("problem_id").agg(pl.col("reward").mean())["reward"]
        record = {
            "step": step,
            "loss": float(loss.detach()) if loss is not None else float("nan"),
            "nonfinite_problems": int((~finite).sum()),
            "reward_mean": float(rollouts["reward"].mean()),
            "frac_reward_zero_std": float(((rates == 0) | (rates == 1)).mean()),
            "completion_tokens_mean": float(rollouts["num_tokens"].mean()),
            "grad_norm": float(grad_norm),
            "kl": _mean_kl(logp, ref_logp, batch.completion_mask),
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        if resume is not None and checkpoint_every > 0 and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
            resume.save(step + 1, model, optimizer, history)
        if log:
            log(record)
    model.eval()
    return history


def _mean_kl(logp, ref_logp, mask) -> float:
    if ref_logp is None:
        return 0.0
    log_ratio = (ref_logp - logp).detach()
    kl = torch.exp(log_ratio) - log_ratio - 1
    return float((kl * mask).sum() / mask.sum().clamp(min=1))


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 30  # linear warm-up, then linear decay to 0
    seed: int = 0


def target_batch(contexts: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) for context + target sequences; labels are -100 outside
    the target, so a causal-LM loss scores the target tokens only (supervised pre-training, answer perplexity)."""
    seqs = [c + t for c, t in zip(contexts, targets)]
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), pad_id)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100)
    for i, (context, seq) in enumerate(zip(contexts, seqs)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
        labels[i, len(context) : len(seq)] = torch.tensor(seq[len(context) :])
    return input_ids, attention_mask, labels


def supervised_pretrain(
    model, tokenizer, prompts: Sequence[str], targets: Sequence[str], config: SFTConfig, log: Callable[[dict], None] | None = None
) -> list[dict]:
    """Next-token loss on the target tokens only (the prompt conditions but is not learned)."""
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) * max(0.0, 1 - s / config.steps)
    )
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    target_ids = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in targets]
    model.train()
    history = []
    for step, rows in enumerate(_epoch_batches(range(len(prompts)), config.batch_size, config.steps, config.seed)):
        input_ids, attention_mask, labels = target_batch([prompt_ids[r] for r in rows], [target_ids[r] for r in rows], tokenizer.pad_token_id)
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        record = {"step": step, "loss": float(out.loss.detach()), "lr": schedule.get_last_lr()[0]}
        history.append(record)
        if log and (step % 50 == 0 or step == config.steps - 1):
            log(record)
    model.eval()
    return history
