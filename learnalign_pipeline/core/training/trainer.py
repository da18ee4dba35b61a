"""The GRPO training loop (on-policy, one optimizer step per generation batch).

Each GRPO step samples K completions for a batch of problems from the live policy, rewards them, and takes one
AdamW step on `per_problem_loss(...).mean()`. With one update per batch the sampling policy equals the policy
being updated, so the importance ratio is exactly 1 and the loss gradient is the plain policy gradient (plus KL).
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence

import polars as pl
import torch

from ..policy.generation import TransformersBackend
from ..policy.rollouts import sample_rollouts
from ..task.config import TaskConfig
from ..task.verify import Verifier
from .config import GRPOConfig
from .grpo import per_problem_loss, to_rollout_batch, token_logprobs
from .resume import ResumeDirectory, restore


def epoch_batches(ids: Sequence[int], batch_size: int, steps: int, seed: int):
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
    config: GRPOConfig,
    task: TaskConfig,
    log: Callable[[dict], None] | None = None,
    resume: ResumeDirectory | None = None,
    on_rollouts: Callable[[int, pl.DataFrame], None] | None = None,
    reference: torch.nn.Module | None = None,
) -> list[dict]:
    """Train `model` in place on `problems` with the task's prompts and completion length. The KL term's reference
    is `reference` (a frozen model: the base policy when `config.reference` is "base"), or else a frozen copy of
    the start ("stage_start").

    With `resume`, the full training state is saved there after every `config.checkpoint_every` steps, and training
    continues from the newest saved state it finds; `model` must then be the same start model, and the result
    is bitwise the one of an uninterrupted run (same thread count); `resume.resumed_from_step` says where it
    started. `on_rollouts(step, rollouts)` sees every step's rewarded rollouts (LIMR's per-problem accuracy
    trajectory).
    """
    if problems.height == 0:
        raise ValueError("GRPO needs at least one problem")
    torch.manual_seed(config.seed)
    sampling, loss_config, template = (
        config.sampling(task.max_new_tokens),
        config.loss(task.max_new_tokens),
        task.prompt_format(),
    )
    if config.reference == "base" and config.beta and reference is None:
        raise ValueError("reference='base' needs the base policy: pass it as `reference`")
    ref_model = None
    if config.beta:
        ref_model = (reference if reference is not None else copy.deepcopy(model)).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    backend = TransformersBackend(model, tokenizer)
    batch_size = min(config.problems_per_step, problems.height)
    history: list[dict] = []
    first_step = 0
    state = resume.latest(model.dtype) if resume is not None else None
    if state is not None:
        restore(state, model, optimizer)
        history, first_step = list(state.history), state.step
    for step, rows in enumerate(epoch_batches(range(problems.height), batch_size, config.steps, config.seed)):
        if step < first_step:  # done before the restart; the batch generator is replayed to stay in sequence
            continue
        started = time.perf_counter()
        batch_problems = problems[rows]
        rollouts = sample_rollouts(
            backend, batch_problems, sampling, verifier, template, base_seed=config.seed * 1_000_003 + step
        )
        if on_rollouts:
            on_rollouts(step, rollouts)
        batch = to_rollout_batch(batch_problems, rollouts, tokenizer, template, loss_config)
        model.train()
        logp = token_logprobs(model, batch, sampling.temperature)
        ref_logp = None
        if ref_model is not None:
            with torch.no_grad():
                ref_logp = token_logprobs(ref_model, batch, sampling.temperature)
        losses = per_problem_loss(logp, batch, loss_config, ref_logp=ref_logp)
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
        every = config.checkpoint_every
        if resume is not None and every > 0 and (step + 1) % every == 0 and step + 1 < config.steps:
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


class TrajectoryRecorder:
    """`train_grpo(on_rollouts=...)` callback: each problem's accuracy at its k-th visit is its epoch-k accuracy
    (the trainer walks seeded permutations of the data, so the k-th visit falls in the k-th epoch). LIMR scores
    problems by these trajectories."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._visits: dict[str, int] = {}

    def __call__(self, step: int, rollouts: pl.DataFrame) -> None:
        per_problem = rollouts.group_by("problem_id", maintain_order=True).agg(pl.col("reward").mean())
        for pid, accuracy in per_problem.iter_rows():
            epoch = self._visits.get(pid, 0)
            self._visits[pid] = epoch + 1
            self.rows.append({"problem_id": pid, "epoch": epoch, "step": step, "accuracy": float(accuracy)})

    def frame(self) -> pl.DataFrame:
        schema = {"problem_id": pl.String, "epoch": pl.Int32, "step": pl.Int32, "accuracy": pl.Float64}
        return pl.DataFrame(self.rows, schema=schema)
