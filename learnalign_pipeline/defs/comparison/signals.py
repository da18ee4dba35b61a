"""Extra per-problem signals some selection methods need, computed once and shared by every method:

* `validation_problems`, `validation_gradients`: GradAlign's trusted validation set (a seeded slice of the clean
  benchmark, left out of every comparison evaluation) and its per-problem gradients, from the same
  `gradient_features` function, loss and projector (same seed) as the pool's `projected_gradients`;
* `cold_start_signals`: p and gradients at the base policy with the pool's K (LearnAlign w/o warm-up);
* `zero_variance_gradients`: the KL-only gradient direction of every p in {0, 1} problem (LearnAlign w/o V);
* `answer_perplexity`: PPL of each reference answer with and without its question (PPL-Top, IFD);
* `full_data_policy`, `limr_trajectories`: GRPO on the whole pool for several epochs from the warm-up policy,
  recording every problem's accuracy at each visit (LIMR's per-epoch trajectory).
"""

import json
import math

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ...core.policy.generation import SamplingSpec
from ...core.policy.rollouts import sample_rollouts
from ...core.policy.rollouts import success_rates as rollout_success_rates
from ...core.selection.features import features_for_rates, gradient_features, memory_budget, scatter_rows
from ...core.selection.methods import visit_trajectory
from ...core.selection.perplexity import answer_perplexity as perplexity_of_answers
from ...core.selection.scoring import carries_gradient, unit_rows
from ...core.storage.artifacts import Checkpoint, TensorBundle
from ...lib.outputs import versioned
from ...lib.resources import ArtifactStore, ComputeSettings, GRPOLoss, TaskSettings, TrainerSettings
from ...lib.tags import MANUAL, gpu_asset, gpu_op, gpu_step
from ...lib.training import (
    finish_checkpoint,
    grpo_settings,
    grpo_stage_config,
    reference_checkpoint,
    reference_model,
    train_from,
)
from ..selection.gradients import pool_feature_config

GROUP = "comparison"


def projected_features(
    model,
    reference,
    tokenizer,
    problems: pl.DataFrame,
    rollouts: pl.DataFrame,
    rates: pl.DataFrame,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    projected_gradients,
    compute: ComputeSettings,
) -> torch.Tensor:
    """Raw projected gradients (float32) with rows following `rates`, with the pool's feature settings; zero rows
    for zero-variance problems."""
    return features_for_rates(
        model,
        reference,
        tokenizer,
        problems,
        rollouts,
        rates,
        grpo_loss.loss_config(task.max_new_tokens),
        pool_feature_config(projected_gradients),
        task.prompt_format(),
        empty_width=int(projected_gradients.metadata["width"]),
        autocast_dtype=compute.config().autocast_dtype(),
    )


def rates_and_features(
    policy: Checkpoint,
    base: Checkpoint,
    problems: pl.DataFrame,
    num_samples: int,
    seed: int,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    projected_gradients: TensorBundle,
    compute: ComputeSettings,
) -> tuple[pl.DataFrame, torch.Tensor]:
    """Success rates from fresh rollouts (T = 1) at `policy`, and the problems' raw projected gradients there, with
    the pool's feature settings and the KL reference training would use from `policy`; rows follow the rates."""
    model, tokenizer = compute.load_policy(policy.path)
    spec = SamplingSpec(num_samples=num_samples, temperature=1.0, top_p=1.0, max_new_tokens=task.max_new_tokens)
    backend = compute.generation_backend(model, tokenizer)
    rollouts = sample_rollouts(backend, problems, spec, task.make_verifier(), task.prompt_format(), seed)
    rates = rollout_success_rates(rollouts)
    reference = reference_checkpoint(grpo_loss, policy, base)
    ref_model = reference_model(grpo_loss.loss_config(task.max_new_tokens), reference, policy, model)
    features = projected_features(
        model, ref_model, tokenizer, problems, rollouts, rates, task, grpo_loss, projected_gradients, compute
    )
    return rates, features


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


@dg.asset(group_name=GROUP, code_version="2", **gpu_step(manual=True))
def validation_gradients(
    config: ValidationGradientConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    compute: ComputeSettings,
    validation_problems: pl.DataFrame,
    projected_gradients: TensorBundle,
    warmup_policy: Checkpoint,
    pretrained_policy: Checkpoint,
) -> dg.Output[TensorBundle]:
    """Raw projected gradient of each validation problem at the warm-up policy (float32, not normalized, so
    GradAlign can aggregate raw gradients and normalize once), and its success rate."""
    rates, features = rates_and_features(
        warmup_policy,
        pretrained_policy,
        validation_problems,
        config.num_samples,
        config.seed,
        task,
        grpo_loss,
        projected_gradients,
        compute,
    )
    bundle = TensorBundle(
        tensors={
            "features": features,
            "success_rate": torch.tensor(rates["success_rate"].to_numpy(), dtype=torch.float32),
        },
        metadata={
            "problem_ids": json.dumps(rates["problem_id"].to_list()),
            "projector": projected_gradients.metadata["config"],
        },
    )
    return versioned(
        bundle,
        problems=rates.height,
        with_gradient=int(
            carries_gradient(features.norm(dim=1), pool_feature_config(projected_gradients).norm_floor).sum()
        ),
        mean_success_rate=float(rates["success_rate"].mean()),
    )


class ColdStartConfig(dg.Config):
    num_samples: int | None = Field(
        default=None,
        description="rollouts per pool problem at the base policy (K); default: the pool's K (success_rates), so the "
        "ablation changes only the policy, not how finely p is measured",
    )
    seed: int = Field(default=0, description="base sampling seed")


@dg.asset(group_name=GROUP, code_version="3", **gpu_step(manual=True))
def cold_start_signals(
    config: ColdStartConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    compute: ComputeSettings,
    raw_problems: pl.DataFrame,
    success_rates: pl.DataFrame,
    projected_gradients: TensorBundle,
    pretrained_policy: Checkpoint,
) -> dg.Output[TensorBundle]:
    """Success rate and unit projected gradient of every pool problem at the base (pre-warm-up) policy, rows in
    `success_rates` order: LearnAlign's "w/o warm-up" ablation."""
    pool = success_rates.select("problem_id").join(raw_problems, on="problem_id", how="left", maintain_order="left")
    num_samples = config.num_samples or int(success_rates["num_samples"].max())
    rates, features = rates_and_features(
        pretrained_policy,
        pretrained_policy,
        pool,
        num_samples,
        config.seed,
        task,
        grpo_loss,
        projected_gradients,
        compute,
    )
    unit, norms = unit_rows(features, pool_feature_config(projected_gradients).norm_floor)
    bundle = TensorBundle(
        tensors={
            "success_rate": torch.tensor(rates["success_rate"].to_numpy(), dtype=torch.float32),
            "unit_features": unit.to(torch.float16),
            "norms": norms,
        },
        metadata={"problem_ids": json.dumps(rates["problem_id"].to_list()), "policy": pretrained_policy.path.name},
    )
    return versioned(
        bundle,
        problems=rates.height,
        num_samples=num_samples,
        learnable_share=float((norms > 0).float().mean()),
        mean_success_rate=float(rates["success_rate"].mean()),
    )


@dg.asset(group_name=GROUP, code_version="1", **gpu_step(manual=True))
def zero_variance_gradients(
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    compute: ComputeSettings,
    raw_problems: pl.DataFrame,
    rollouts: pl.DataFrame,
    success_rates: pl.DataFrame,
    projected_gradients: TensorBundle,
    warmup_policy: Checkpoint,
    pretrained_policy: Checkpoint,
) -> dg.Output[TensorBundle]:
    """Unit projected gradients of the pool's p in {0, 1} problems at the warm-up policy, rows in `success_rates`
    order (zero rows for learnable problems). Their advantage is zero, so the gradient is the KL term alone, taken
    against LearnAlign's reference, the initial (pre-trained) model, whatever `grpo_loss.reference` says: against the
    warm-up policy itself it would be exactly zero. "w/o V" ranks them by this direction instead of filtering them."""
    model, tokenizer = compute.load_policy(warmup_policy.path)
    loss = grpo_loss.loss_config(task.max_new_tokens)
    zero = success_rates.filter((pl.col("success_rate") == 0) | (pl.col("success_rate") == 1))
    problems = zero.select("problem_id").join(raw_problems, on="problem_id", how="left", maintain_order="left")
    width = int(projected_gradients.metadata["width"])
    features = torch.zeros(success_rates.height, width)
    if loss.beta and problems.height:
        config = pool_feature_config(projected_gradients)
        reference = compute.load_policy(pretrained_policy.path)[0]
        result = gradient_features(
            model,
            reference,
            tokenizer,
            problems,
            rollouts,
            loss,
            config.projector(),
            task.prompt_format(),
            scope=config.scope,
            last_blocks=config.last_blocks,
            problems_per_batch=config.problems_per_batch,
            checkpointing=config.activation_checkpointing,
            memory_budget_bytes=memory_budget(model, config.memory_budget_gib),
            autocast_dtype=compute.config().autocast_dtype(),
        )
        features = scatter_rows(success_rates["problem_id"].to_list(), result, width)
    unit, norms = unit_rows(features, pool_feature_config(projected_gradients).norm_floor)
    bundle = TensorBundle(
        tensors={"unit_features": unit.to(torch.float16), "norms": norms},
        metadata={
            "problem_ids": json.dumps(success_rates["problem_id"].to_list()),
            "reference": pretrained_policy.path.name,
        },
    )
    return versioned(
        bundle,
        summary=f"{int((norms > 0).sum())} of {problems.height} zero-variance problems with a KL direction",
        zero_variance_problems=problems.height,
        with_direction=int((norms > 0).sum()),
        beta=loss.beta,
    )


@dg.asset(group_name=GROUP, code_version="1", **gpu_step(manual=True))
def answer_perplexity(
    task: TaskSettings, compute: ComputeSettings, raw_problems: pl.DataFrame, warmup_policy: Checkpoint
) -> dg.Output[pl.DataFrame]:
    """Per pool problem: perplexity of its reference answer (worked solution when the source has one, else the
    gold answer) under the warm-up policy, with and without the question; IFD is their ratio."""
    model, tokenizer = compute.load_policy(warmup_policy.path)
    targets = [s if s else a for s, a in zip(raw_problems["solution"].to_list(), raw_problems["answer"].to_list())]
    with compute.config().autocast_context():
        conditional, unconditional = perplexity_of_answers(
            model, tokenizer, raw_problems["prompt"].to_list(), targets, task.prompt_format()
        )
    frame = raw_problems.select("problem_id").with_columns(
        pl.Series("perplexity", conditional.double().numpy()),
        pl.Series("unconditional_perplexity", unconditional.double().numpy()),
    )
    return versioned(frame, mean_perplexity=float(frame["perplexity"].mean()), policy=warmup_policy.path.name)


class FullDataConfig(grpo_stage_config(problems_per_step=128, num_samples=4)):
    """GRPO on the whole pool from the warm-up policy for several epochs (LIMR's reference run); 4 rollouts per
    problem per visit keep the 3 epochs cheap. `steps` is ignored: it follows from epochs and problems_per_step."""

    epochs: int = Field(default=3, description="passes over the pool; LIMR's trajectory has one point per epoch")


@dg.multi_asset(
    group_name=GROUP,
    outs={
        "full_data_policy": dg.AssetOut(
            code_version="3",
            description="GRPO on the full pool for `epochs` epochs.",
            **gpu_asset("transformers", manual=True),
        ),
        "limr_trajectories": dg.AssetOut(
            code_version="3",
            description="Per (problem, epoch): accuracy of its rollouts in that epoch's visit.",
            kinds={"polars"},
            tags=MANUAL,
        ),
    },
    **gpu_op(),
)
def full_data_run(
    context: dg.AssetExecutionContext,
    config: FullDataConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    trainer: TrainerSettings,
    compute: ComputeSettings,
    store: ArtifactStore,
    raw_problems: pl.DataFrame,
    warmup_policy: Checkpoint,
    pretrained_policy: Checkpoint,
):
    steps = math.ceil(config.epochs * raw_problems.height / config.problems_per_step)
    grpo = grpo_settings(config, grpo_loss, steps=steps)
    [run] = train_from(
        context, warmup_policy, pretrained_policy, [(raw_problems, grpo)], task, grpo_loss, trainer, compute, store,
        record_rollouts=True,
    )  # fmt: skip
    yield finish_checkpoint(
        run.staging,
        run.history,
        {**config.model_dump(), "steps": steps, "loss": grpo_loss.model_dump(), "start": warmup_policy.path.name},
        output_name="full_data_policy",
        problems=raw_problems.height,
        epochs=config.epochs,
        train_seconds=run.train_seconds,
    )
    trajectory = visit_trajectory(run.rollouts)
    per_epoch = trajectory.group_by("epoch").agg(pl.col("accuracy").mean(), pl.len().alias("problems")).sort("epoch")
    yield versioned(
        trajectory,
        output_name="limr_trajectories",
        epochs=int(per_epoch.height),
        mean_accuracy_by_epoch=dg.MetadataValue.json(dict(zip(map(str, per_epoch["epoch"]), per_epoch["accuracy"]))),
    )
