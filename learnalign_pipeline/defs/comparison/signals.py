"""Extra per-problem signals some selection methods need, computed once and shared by every method:

* `validation_problems`, `validation_gradients`: GradAlign's trusted validation set (a seeded slice of the clean
  benchmark, left out of every comparison evaluation) and its per-problem gradients, from the same
  `gradient_features` function, loss and projector (same seed) as the pool's `projected_gradients`;
* `cold_start_signals`: p and gradients at the base policy (LearnAlign w/o warm-up);
* `answer_perplexity`: PPL of each reference answer with and without its question (PPL-Top, IFD);
* `full_data_policy`, `limr_trajectories`: GRPO on the whole pool for several epochs from the warm-up policy,
  recording every problem's accuracy at each visit (LIMR's per-epoch trajectory).
"""


import json
import math
import time

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ...core.artifacts import Checkpoint, TensorBundle
from ...core.comparison import TrajectoryRecorder
from ...core.generation import SamplingSpec
from ...core.gradients import gradient_features
from ...core.perplexity import answer_perplexity as perplexity_of_answers
from ...core.policy import load_policy
from ...core.rollouts import learnable_problems, sample_rollouts
from ...core.rollouts import success_rates as rollout_success_rates
from ...core.scoring import unit_rows
from ...core.trainer import train_grpo
from ..constants import gpu_asset, gpu_op, gpu_step
from ..generation import Generator
from ..policy.checkpoints import publish_checkpoint
from ..policy.grpo_config import GRPOStageConfig
from ..resources import ArtifactStore, GRPOLoss, TaskSettings
from ..selection.gradients import GradientConfig
from ..versioning import versioned

GROUP = "comparison"
# Run on demand (`learnalign compare`, `learnalign curriculum`), never by automation: they train dozens of policies.
MANUAL = {"learnalign/automation": "manual"}


def manual_step(*kinds: str) -> dict:
    """gpu_step's keyword arguments with the manual-automation tag added."""
    step = gpu_step(*kinds)
    return {**step, "tags": {**step["tags"], **MANUAL}}


def manual_asset(*kinds: str) -> dict:
    out = gpu_asset(*kinds)
    return {**out, "tags": {**out["tags"], **MANUAL}}


def pool_gradient_config(projected_gradients: TensorBundle) -> GradientConfig:
    """The settings the pool's features were computed with (projection kind, widths, seed, scope)."""
    return GradientConfig(**json.loads(projected_gradients.metadata["config"]))


def projected_features(model, reference, tokenizer, problems: pl.DataFrame, rollouts: pl.DataFrame, rates: pl.DataFrame, task, grpo_loss, projected_gradients) -> torch.Tensor:
    """Raw projected gradients (float32) with rows following `rates`; zero rows for zero-variance problems."""
    config = pool_gradient_config(projected_gradients)
    active = learnable_problems(rates).select("problem_id").join(problems, on="problem_id", how="left", maintain_order="left")
    width = int(projected_gradients.metadata["width"])
    features = torch.zeros(rates.height, width)
    if active.height:
        result = gradient_features(
            model, reference, tokenizer, active, rollouts, grpo_loss.config(task.max_new_tokens), config.projector(),
            task.prompt_format(), scope=config.scope, last_blocks=config.last_blocks, problems_per_batch=config.problems_per_batch,
        )
        row_of = {pid: i for i, pid in enumerate(rates["problem_id"].to_list())}
        features[[row_of[p] for p in result.problem_ids]] = result.features
    return features


class ValidationConfig(dg.Config):
    """GradAlign's small trusted validation set: clean gold answers, never trained on, never evaluated on."""

    size: int = Field(default=64, description="benchmark problems held out as the trusted validation set")
    seed: int = Field(default=0, description="seed of the held-out draw")


@dg.asset(group_name=GROUP, code_version="1", kinds={"polars"}, tags=MANUAL)
def validation_problems(config: ValidationConfig, benchmark_problems: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """A seeded slice of the benchmark (clean gold); comparison evaluations leave these problems out."""
    frame = benchmark_problems.sample(n=min(config.size, benchmark_problems.height), seed=config.seed, shuffle=True)
    return versioned(frame, problems=frame.height)


class ValidationGradientConfig(dg.Config):
    num_samples: int = Field(default=8, description="rollouts per validation problem (k_v)")
    seed: int = Field(default=0, description="base sampling seed")


@dg.asset(group_name=GROUP, code_version="1", **manual_step())
def validation_gradients(
    config: ValidationGradientConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    generator: Generator,
    validation_problems: pl.DataFrame,
    projected_gradients: TensorBundle,
    warmup_policy: Checkpoint,
    pretrained_policy: Checkpoint,
) -> dg.Output[TensorBundle]:
    """Raw projected gradient of each validation problem at the warm-up policy (float32, not normalized, so
    GradAlign can aggregate raw gradients and normalize once), and its success rate."""
    model, tokenizer = load_policy(warmup_policy.path)
    reference = load_policy(pretrained_policy.path)[0] if grpo_loss.beta else None
    spec = SamplingSpec(num_samples=config.num_samples, temperature=1.0, max_new_tokens=task.max_new_tokens)
    rollouts = sample_rollouts(generator.backend("transformers", warmup_policy), validation_problems, spec, task.make_verifier(), task.prompt_format(), config.seed)
    rates = rollout_success_rates(rollouts)
    features = projected_features(model, reference, tokenizer, validation_problems, rollouts, rates, task, grpo_loss, projected_gradients)
    bundle = TensorBundle(
        tensors={"features": features, "success_rate": torch.tensor(rates["success_rate"].to_numpy(), dtype=torch.float32)},
        metadata={"problem_ids": json.dumps(rates["problem_id"].to_list()), "projector": projected_gradients.metadata["config"]},
    )
    return versioned(
        bundle,
        problems=rates.height,
        with_gradient=int((features.norm(dim=1) > 0).sum()),
        mean_success_rate=float(rates["success_rate"].mean()),
    )


class ColdStartConfig(dg.Config):
    num_samples: int = Field(default=4, description="rollouts per pool problem at the base policy (K; the warm-up's K=8 costs twice as much)")
    seed: int = Field(default=0, description="base sampling seed")


@dg.asset(group_name=GROUP, code_version="1", **manual_step())
def cold_start_signals(
    config: ColdStartConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    generator: Generator,
    raw_problems: pl.DataFrame,
    success_rates: pl.DataFrame,
    projected_gradients: TensorBundle,
    pretrained_policy: Checkpoint,
) -> dg.Output[TensorBundle]:
    """Success rate and unit projected gradient of every pool problem at the base (pre-warm-up) policy, rows in
    `success_rates` order: LearnAlign's "w/o warm-up" ablation."""
    model, tokenizer = load_policy(pretrained_policy.path)
    reference = load_policy(pretrained_policy.path)[0] if grpo_loss.beta else None
    pool = success_rates.select("problem_id").join(raw_problems, on="problem_id", how="left", maintain_order="left")
    spec = SamplingSpec(num_samples=config.num_samples, temperature=1.0, max_new_tokens=task.max_new_tokens)
    rollouts = sample_rollouts(generator.backend("transformers", pretrained_policy), pool, spec, task.make_verifier(), task.prompt_format(), config.seed)
    rates = rollout_success_rates(rollouts)
    features = projected_features(model, reference, tokenizer, pool, rollouts, rates, task, grpo_loss, projected_gradients)
    unit, norms = unit_rows(features)
    bundle = TensorBundle(
        tensors={"success_rate": torch.tensor(rates["success_rate"].to_numpy(), dtype=torch.float32), "unit_features": unit.to(torch.float16), "norms": norms},
        metadata={"problem_ids": json.dumps(rates["problem_id"].to_list()), "policy": pretrained_policy.path.name},
    )
    return versioned(bundle, problems=rates.height, learnable_share=float((norms > 0).float().mean()), mean_success_rate=float(rates["success_rate"].mean()))


@dg.asset(group_name=GROUP, code_version="1", **manual_step())
def answer_perplexity(task: TaskSettings, raw_problems: pl.DataFrame, warmup_policy: Checkpoint) -> dg.Output[pl.DataFrame]:
    """Per pool problem: perplexity of its reference answer (worked solution when the source has one, else the
    gold answer) under the warm-up policy, with and without the question; IFD is their ratio."""
    model, tokenizer = load_policy(warmup_policy.path)
    targets = [s if s else a for s, a in zip(raw_problems["solution"].to_list(), raw_problems["answer"].to_list())]
    conditional, unconditional = perplexity_of_answers(model, tokenizer, raw_problems["prompt"].to_list(), targets, task.prompt_format())
    frame = raw_problems.select("problem_id").with_columns(
        pl.Series("perplexity", conditional.double().numpy()), pl.Series("unconditional_perplexity", unconditional.double().numpy())
    )
    return versioned(frame, mean_perplexity=float(frame["perplexity"].mean()), policy=warmup_policy.path.name)


class FullDataConfig(GRPOStageConfig):
    """GRPO on the whole pool from the warm-up policy for several epochs (LIMR's reference run)."""

    epochs: int = Field(default=3, description="passes over the pool; LIMR's trajectory has one point per epoch")
    problems_per_step: int = Field(default=128, description="problems per step")
    num_samples: int = Field(default=4, description="rollouts per problem per visit (accuracy resolution 1/4; keeps the 3 epochs cheap)")
    steps: int = Field(default=0, description="ignored: the step count follows from epochs and problems_per_step")


@dg.multi_asset(
    group_name=GROUP,
    outs={
        "full_data_policy": dg.AssetOut(code_version="1", description="GRPO on the full pool for `epochs` epochs.", **manual_asset("transformers")),
        "limr_trajectories": dg.AssetOut(code_version="1", description="Per (problem, epoch): accuracy of its rollouts in that epoch's visit.", kinds={"polars"}, tags=MANUAL),
    },
    **gpu_op(),
)
def full_data_run(
    context: dg.AssetExecutionContext,
    config: FullDataConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    store: ArtifactStore,
    raw_problems: pl.DataFrame,
    warmup_policy: Checkpoint,
):
    model, tokenizer = load_policy(warmup_policy.path)
    steps = math.ceil(config.epochs * raw_problems.height / config.problems_per_step)
    train_config = config.model_copy(update={"steps": steps}).train_config(task, grpo_loss)
    recorder = TrajectoryRecorder()
    started = time.perf_counter()
    history = train_grpo(model, tokenizer, raw_problems, task.make_verifier(), train_config, log=context.log.debug, on_rollouts=recorder)
    seconds = round(time.perf_counter() - started, 1)
    checkpoint = publish_checkpoint(
        store, model, tokenizer, history, {**config.model_dump(), "steps": steps, "loss": grpo_loss.model_dump(), "start": warmup_policy.path.name},
        problems=raw_problems.height, epochs=config.epochs, train_seconds=seconds,
    )
    yield dg.Output(checkpoint.value, output_name="full_data_policy", data_version=checkpoint.data_version, metadata=checkpoint.metadata)
    trajectory = recorder.frame()
    per_epoch = trajectory.group_by("epoch").agg(pl.col("accuracy").mean(), pl.len().alias("problems")).sort("epoch")
    yield versioned(
        trajectory,
        output_name="limr_trajectories",
        epochs=int(per_epoch.height),
        mean_accuracy_by_epoch=dg.MetadataValue.json(dict(zip(map(str, per_epoch["epoch"]), per_epoch["accuracy"]))),
    )
