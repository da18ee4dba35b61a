"""The settings of training: GRPO (warm-up, training on the selected subset, comparison runs, curriculum rounds)
and the supervised pre-training of the built-in policy. Every default lives here once; the Dagster run configs
and the `grpo_loss` resource are generated from these classes (`lib/config.py`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ..compute import visible_gpus
from ..data.arithmetic import DEFAULT_SHORTCUT_RATES
from ..policy.generation import SamplingSpec
from ..settings import require, require_finite, setting
from .grpo import Aggregation, GRPOLossConfig

# The fields that define the loss and its KL reference. Warm-up, the gradient features and training must use the
# same values, so Dagster binds them once (the `grpo_loss` resource) instead of per stage.
LOSS_FIELDS = ("reference", "beta", "clip_epsilon", "scale_rewards", "advantage_eps", "aggregation")

Reference = Literal["stage_start", "base"]


@dataclass(frozen=True)
class GRPOConfig:
    """On-policy GRPO: each step samples `num_samples` completions for `problems_per_step` problems from the live
    policy, rewards them with the task's verifier and takes one AdamW step on the mean per-problem loss. TRL's
    GRPOTrainer runs it (core/training/trl_engine.py maps these settings to TRL's and refuses what TRL cannot do).

    > Policy and reference
        reference
    > Generation (the rollouts training samples)
        num_samples, temperature
    > Loss (also what the gradient features differentiate)
        beta, clip_epsilon, scale_rewards, advantage_eps, aggregation
    > Optimisation
        learning_rate, weight_decay, max_grad_norm
    > Schedule and robustness
        steps, problems_per_step, seed, checkpoint_every, on_nonfinite, on_no_signal

    The completion length and prompt format come from the task (`core/task/config.py`), shared with every stage.
    """

    reference: Reference = setting(
        "stage_start",
        "the KL reference policy, for training and gradient features alike: stage_start = the policy a stage starts "
        "from (the one being scored, for features; TRL's default), base = the pre-trained base policy",
    )

    num_samples: int = setting(8, "rollouts per problem (group size G)")
    temperature: float = setting(1.0, "sampling temperature of the rollouts")

    beta: float = setting(
        0.04, "weight of the k3 KL estimate against the reference policy (LearnAlign: 0.04; 0 disables it)"
    )
    clip_epsilon: float = setting(0.2, "PPO clip range of the importance ratio")
    scale_rewards: bool = setting(True, "divide advantages by the group's reward std (GRPO); False gives Dr. GRPO")
    advantage_eps: float = setting(1e-4, "added to the group's reward std before dividing")
    aggregation: Aggregation = setting(
        "sample_mean", "per-problem loss normalizer: sample_mean (GRPO), token_mean, constant (Dr. GRPO)"
    )

    learning_rate: float = setting(3e-4, "AdamW learning rate (the papers use 1e-6 for 1.5B models)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    max_grad_norm: float = setting(1.0, "gradient clipping norm")

    steps: int = setting(60, "optimizer steps; each samples a fresh batch of problems")
    problems_per_step: int = setting(32, "problems per step (each with num_samples rollouts)")
    seed: int = setting(0, "seed of batch order and sampling")
    checkpoint_every: int = setting(
        10,
        "save the full training state (fp32 weights, optimizer, RNG, log) every this many steps, so a killed run "
        "resumes from it and ends bitwise equal to an uninterrupted one; only the newest sealed state is kept and the "
        "last step writes none; 0 disables it. Does not change the result.",
    )
    on_nonfinite: Literal["fail", "exclude"] = setting(
        "fail",
        "a step whose loss or gradient is NaN/inf: fail naming the step and its problems, or skip its update and "
        "count its problems (TRL's batched loss cannot leave out single problems)",
    )
    on_no_signal: Literal["fail", "warn"] = setting(
        "fail",
        "a run in which every group of every step had equal rewards (every advantage 0, nothing learned from reward): "
        "fail with the counts, or publish it with a warning and `no_reward_signal` in its metadata",
    )

    def __post_init__(self) -> None:
        require_finite(self)
        require(
            self.num_samples >= 2,
            "num_samples",
            f"GRPO scores each rollout against the others of its group: needs >= 2 rollouts per problem (got "
            f"{self.num_samples}; with 1 every advantage is 0 and nothing is trained)",
        )
        require(self.temperature > 0, "temperature", "GRPO samples its rollouts: must be > 0")
        require(self.beta >= 0, "beta", "must be >= 0")
        require(self.clip_epsilon > 0, "clip_epsilon", "must be > 0")
        require(self.advantage_eps > 0, "advantage_eps", "must be > 0 (a group with equal rewards has std 0)")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        require(self.steps >= 1, "steps", f"must be >= 1 (got {self.steps})")
        require(self.problems_per_step >= 1, "problems_per_step", f"must be >= 1 (got {self.problems_per_step})")
        require(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0 disables training states)")

    def require_full_step(self, num_problems: int) -> None:
        """Refuse a training set that cannot fill one step: TRL trains whole batches of `problems_per_step`
        problems and drops a short one, so with fewer problems it trains no step at all (or steps that mix epochs)."""
        require(
            num_problems >= self.problems_per_step,
            "problems_per_step",
            f"{num_problems} problems cannot fill one step of {self.problems_per_step}: lower problems_per_step to at "
            f"most {num_problems}, or train on more problems (a larger pool, budget or subset_size)",
        )

    def loss(self, max_new_tokens: int) -> GRPOLossConfig:
        """The loss these settings define, for completions of at most `max_new_tokens` tokens."""
        return GRPOLossConfig(
            beta=self.beta,
            clip_epsilon=self.clip_epsilon,
            scale_rewards=self.scale_rewards,
            advantage_eps=self.advantage_eps,
            aggregation=self.aggregation,
            max_completion_tokens=max_new_tokens,
        )

    def sampling(self, max_new_tokens: int) -> SamplingSpec:
        return SamplingSpec(
            num_samples=self.num_samples, temperature=self.temperature, top_p=1.0, max_new_tokens=max_new_tokens
        )


Distributed = Literal["ddp", "fsdp", "zero3"]
RolloutEngine = Literal["seeded", "vllm"]


@dataclass(frozen=True)
class TrainerConfig:
    """How GRPO runs: TRL's `GRPOTrainer` (core/training/trl_engine.py), in `processes` processes started by
    `accelerate launch` through Dagster Pipes. Device and precision come from the `compute` setting
    (core/compute.py): float32 on CPU, bfloat16 autocast over float32 master weights on CUDA.

    > Processes and memory
        processes, micro_batch_rows, gradient_checkpointing, distributed
    > Rollouts during training
        rollouts, vllm_memory_utilization
    > Hand-off and KL reference
        handoff_dtype, reference_dtype
    """

    processes: int = setting(
        0,
        "training processes, one per GPU: 0 = auto (every visible GPU; 1 on CPU); more than the visible GPUs is "
        "refused before a run (on CPU, any number of gloo processes: used by the tests)",
    )
    micro_batch_rows: int = setting(
        0,
        "rollout rows per forward/backward pass in each process (the memory bound); the step's problems_per_step x "
        "num_samples rows must split into processes x micro-batches, the rest is gradient accumulation; 0 = one "
        "micro-batch per process",
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in the backward pass: much less activation memory for ~30% more compute"
    )
    distributed: Distributed = setting(
        "ddp",
        "ddp: every process holds the whole model; fsdp: parameters, gradients and optimizer state sharded, "
        "checkpoints gathered to full state (resumed with weights-only loading); zero3: DeepSpeed ZeRO-3 (needs the "
        "deepspeed package; its resume is untested here)",
    )
    rollouts: RolloutEngine = setting(
        "seeded",
        "seeded: the project's seeded transformers sampler (a sample depends only on weights, problem, step and "
        "index, so runs are deterministic and equal for any process count); vllm: vLLM colocated in every training "
        "process (TRL's vllm_mode='colocate', GPUs only)",
    )
    vllm_memory_utilization: float = setting(0.3, "rollouts='vllm': share of each GPU's memory vLLM may take")
    handoff_dtype: Literal["start", "float32"] = setting(
        "start",
        "dtype a trained policy is published in: start = its start checkpoint's (a bfloat16 model's next stage then "
        "restarts from rounded weights: at lr 1e-6 most of a step's update is below bfloat16's resolution); float32 "
        "= the master weights, so the next stage continues exactly (vLLM casts them to generator.dtype on load)",
    )
    reference_dtype: Literal["float32", "bfloat16"] = setting(
        "float32",
        "weights of the frozen KL reference model: bfloat16 halves its memory (3 GB at 1.5B, 15 GB at 7B) and its "
        "log-probs then run wholly in bfloat16; float32 keeps CPU runs bitwise reproducible",
    )

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.processes >= 0, "processes", "must be >= 0 (0 = one per visible GPU)")
        require(self.micro_batch_rows >= 0, "micro_batch_rows", "must be >= 0 (0 = one micro-batch per process)")
        require(0 < self.vllm_memory_utilization < 1, "vllm_memory_utilization", "must be in (0, 1)")

    def process_count(self) -> int:
        """The training processes a launch starts: `processes`, or with 0 one per visible GPU (1 on CPU)."""
        return self.processes or max(1, visible_gpus())

    def resolved(self) -> TrainerConfig:
        """These settings with the process count fixed, for the launched processes (which may see other GPUs)."""
        return replace(self, processes=self.process_count())

    def micro_batches(self, rows_per_step: int) -> tuple[int, int]:
        """(rows per micro-batch, micro-batches accumulated per step) for a step of `rows_per_step` rows."""
        processes = self.process_count()
        per_process, remainder = divmod(rows_per_step, processes)
        require(
            remainder == 0,
            "processes",
            f"a step's {rows_per_step} rollout rows (problems_per_step x num_samples) do not split evenly over "
            f"{processes} processes: change problems_per_step or processes",
        )
        rows = self.micro_batch_rows or per_process
        require(
            per_process % rows == 0,
            "micro_batch_rows",
            f"each process trains {per_process} rows per step, not a multiple of micro_batch_rows={rows}",
        )
        return rows, per_process // rows


@dataclass(frozen=True)
class PretrainConfig:
    """The base policy: the built-in tiny policy pre-trained on generated worked solutions (its shape is
    `core/policy/model.py` TinyPolicyConfig), or an existing `save_pretrained` directory (a real model).

    > Base model
        model_path
    > Corpus
        corpus_size, corpus_seed, shortcut_rates
    > Optimisation (AdamW, linear warm-up then linear decay)
        steps, batch_size, learning_rate, warmup_steps, seed
    """

    model_path: str | None = setting(
        None, "a save_pretrained directory or a .gguf file to use as the base policy instead of the built-in one"
    )
    corpus_size: int = setting(40_000, "generated pre-training examples")
    corpus_seed: int = setting(3, "generator seed of the corpus")
    shortcut_rates: dict[str, float] = setting(
        dict(DEFAULT_SHORTCUT_RATES),
        "share of each family's examples that show a wrong shortcut solution (leaves room for RL)",
    )
    steps: int = setting(1000, "optimizer steps")
    batch_size: int = setting(64, "examples per step")
    learning_rate: float = setting(3e-3, "peak AdamW learning rate")
    warmup_steps: int = setting(30, "steps of linear learning-rate warm-up")
    seed: int = setting(0, "seed of initialization and batch order")

    def __post_init__(self) -> None:
        require_finite(self)
        require(
            self.model_path is None or Path(self.model_path).exists(),
            "model_path",
            f"no save_pretrained directory or .gguf file at {self.model_path}",
        )
        require(self.steps >= 1, "steps", f"must be >= 1 (got {self.steps})")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1 (got {self.batch_size})")
        require(self.corpus_size >= 1, "corpus_size", f"must be >= 1 (got {self.corpus_size})")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        bad = {k: v for k, v in self.shortcut_rates.items() if not 0 <= v <= 1}
        require(not bad, "shortcut_rates", f"shares must be in [0, 1], got {bad}")
