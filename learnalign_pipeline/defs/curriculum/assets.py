"""GradAlign's adaptive curriculum as assets: round r's selection (`curriculum_selection_r`: a chunk of M pool
problems scored with round r-1's policy against the trusted validation gradient, the top M/q of those that carry a
gradient kept, more chunks drawn when too few do) and round r's
checkpoint (`curriculum_policy_r`: T GRPO steps on that selection). Round 1 starts from the warm-up policy, so
the lineage reads warm-up -> selection 1 -> policy 1 -> selection 2 -> policy 2 -> ..."""

import dagster as dg
import polars as pl

from ...core.selection.curriculum import CurriculumConfig, score_round
from ...core.storage.artifacts import Checkpoint, TensorBundle
from ...lib.config import config_view, settings
from ...lib.outputs import markdown_table, versioned
from ...lib.resources import ArtifactStore, ComputeSettings, GRPOLoss, TaskSettings, TrainerSettings
from ...lib.tags import gpu_step
from ...lib.training import grpo_stage, grpo_stage_config, reference_checkpoint, reference_model
from ..comparison.signals import pool_feature_config

GROUP = "curriculum"
ROUNDS = 2  # rounds defined as assets; more rounds = a larger constant (each round is two assets)


class CurriculumSelectionConfig(config_view(CurriculumConfig)):
    """One GradAlign selection round (core/selection/curriculum.py CurriculumConfig)."""


class CurriculumTrainConfig(grpo_stage_config(steps=8, problems_per_step=16)):
    """T GRPO steps (default 8) on the round's selection."""


def _round_assets(r: int) -> list:
    previous = "warmup_policy" if r == 1 else f"curriculum_policy_{r - 1}"
    selection_name, policy_name = f"curriculum_selection_{r}", f"curriculum_policy_{r}"

    @dg.asset(
        name=selection_name,
        group_name=GROUP,
        code_version="3",
        ins={"start": dg.AssetIn(previous)},
        description=f"Round {r}: chunk {r - 1} of the pool scored with {previous} (more chunks when fewer than M/q "
        "carry a gradient); the top M/q of those with a gradient are selected.",
        **gpu_step(manual=True),
    )
    def selection(
        config: CurriculumSelectionConfig,
        task: TaskSettings,
        grpo_loss: GRPOLoss,
        compute: ComputeSettings,
        raw_problems: pl.DataFrame,
        validation_problems: pl.DataFrame,
        projected_gradients: TensorBundle,
        pretrained_policy: Checkpoint,
        start: Checkpoint,
    ) -> dg.Output[pl.DataFrame]:
        model, tokenizer = compute.load_policy(start.path)
        loss = grpo_loss.loss_config(task.max_new_tokens)
        reference = reference_model(loss, reference_checkpoint(grpo_loss, start, pretrained_policy), start, model)
        features = pool_feature_config(projected_gradients)  # same projector (and seed) and scope as the pool's
        scored = score_round(
            model,
            reference,
            tokenizer,
            raw_problems,
            validation_problems,
            task.make_verifier(),
            loss,
            features,
            task.config(),
            settings(config, CurriculumConfig),
            r - 1,
            autocast_dtype=compute.config().autocast_dtype(),
        )
        scored = scored.with_columns(pl.lit(r).alias("round"), pl.lit(start.path.name).alias("scored_with"))
        chosen = scored.filter(pl.col("selected")).sort("score", "problem_id", descending=[True, False])
        return versioned(
            scored,
            round=r,
            candidates=scored.height,
            candidates_with_gradient=int(scored["with_gradient"][0]) if scored.height else 0,
            chunks_scored=int(scored["chunks_scored"][0]) if scored.height else 0,
            selected=chosen.height,
            shortfall=str(scored["shortfall"][0]) if scored.height else "kept_fewer",
            mean_success_rate_selected=float(chosen["success_rate"].mean()) if chosen.height else None,
            validation_accuracy=float(scored["validation_accuracy"][0]) if scored.height else None,
            validation_with_gradient=int(scored["validation_with_gradient"][0])
            if scored.height
            else 0,  # 0: every score is 0, ties by id
            scored_with=start.path.name,
            top=dg.MetadataValue.md(markdown_table(chosen.select("problem_id", "score", "success_rate"), max_rows=10)),
        )

    @dg.asset(
        name=policy_name,
        group_name=GROUP,
        code_version="4",
        ins={"start": dg.AssetIn(previous), "round_selection": dg.AssetIn(selection_name)},
        description=f"Round {r}: {previous} after T GRPO steps on {selection_name}.",
        **gpu_step("transformers", manual=True),
    )
    def policy(
        context: dg.AssetExecutionContext,
        config: CurriculumTrainConfig,
        task: TaskSettings,
        grpo_loss: GRPOLoss,
        trainer: TrainerSettings,
        compute: ComputeSettings,
        store: ArtifactStore,
        raw_problems: pl.DataFrame,
        start: Checkpoint,
        pretrained_policy: Checkpoint,
        round_selection: pl.DataFrame,
    ) -> dg.Output[Checkpoint]:
        chosen = round_selection.filter(pl.col("selected")).select("problem_id")
        problems = chosen.join(raw_problems, on="problem_id", how="left", maintain_order="left")
        if 0 < chosen.height < config.problems_per_step:
            # the round kept fewer than a step (too few candidates carry a gradient): smaller steps on what it kept,
            # rather than refusing the round (an empty selection is still refused by the stage)
            context.log.warning(
                f"{context.op.name}: {selection_name} kept {chosen.height} problems, fewer than problems_per_step "
                f"= {config.problems_per_step}: each step trains on those {chosen.height}"
            )
            config = config.model_copy(update={"problems_per_step": chosen.height})
        return grpo_stage(
            context,
            config,
            task,
            grpo_loss,
            trainer,
            compute,
            store,
            start,
            pretrained_policy,
            problems,
            round=r,
            subset_ids=chosen["problem_id"].to_list(),
        )

    return [selection, policy]


curriculum_assets = [a for r in range(1, ROUNDS + 1) for a in _round_assets(r)]
