"""The pre-registered selection experiment (core/evaluation/experiment.py; design in docs/results.md) as assets:

    experiment_problems -> experiment_base_policy -> experiment_runs (accuracy, selections, diagnostics)
                                                  -> experiment_report (statistics, table, plot, DuckDB)

Its own problems and base policy (the `realistic` mix by default), so running it never replaces the demo's pool or
policy. `experiment_runs` is a sharded stage whose shards are seed slots: each seed's tables are written to the row
cache as soon as that seed finishes, so a killed run resumes with only the missing seeds, and the multiprocess or
Kubernetes executors can run seed slots in parallel.
"""

import base64
import dataclasses
import json
import time
from pathlib import Path

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ...core.data.arithmetic import MIXES, MixName
from ...core.evaluation.experiment import (
    ExperimentConfig,
    ExperimentDataConfig,
    analyze,
    curves,
    plot_curves,
    run_seed,
    verdict,
)
from ...core.evaluation.experiment import (
    experiment_problems as build_problems,
)
from ...core.policy.model import load_policy
from ...core.selection.config import FeatureConfig
from ...core.storage.artifacts import Checkpoint, atomic_write_bytes, content_digest, frame_bytes
from ...core.training.config import GRPOConfig
from ...lib.config import config_view, settings
from ...lib.outputs import append_to_duckdb, markdown_table, versioned
from ...lib.progress import step_progress
from ...lib.resources import ArtifactStore, TaskSettings
from ...lib.sharded import NUM_SHARDS, Step, sharded_asset
from ...lib.tags import MANUAL, gpu_asset, gpu_step
from ...lib.training import PretrainRunConfig, pretrain_checkpoint
from ...paths import project_home

GROUP = "experiment"
# Bump when a seed's cached tables would change for the same settings (experiment, training or evaluation logic).
EXPERIMENT_ROWS_VERSION = "2"
TABLES = ("accuracy", "selections", "diagnostics")
# The pipeline's projection (Kronecker 16 x 16); 16 problems per batched backward are ~25% faster on CPU than the
# row cache's content-defined batches of ~4 (the experiment computes its features in memory, not in the cache).
FEATURES = FeatureConfig(problems_per_batch=16)


class ExperimentDataRunConfig(config_view(ExperimentDataConfig)):
    """The experiment's problems (core/evaluation/experiment.py ExperimentDataConfig)."""


@dg.asset(group_name=GROUP, code_version="2", kinds={"polars"}, tags=MANUAL)
def experiment_problems(config: ExperimentDataRunConfig) -> dg.Output[pl.DataFrame]:
    """The pool, the same pool with coin-flip rewards on a share of it, and the held-out target, validation and
    off-target sets (column `role`)."""
    frame = build_problems(settings(config, ExperimentDataConfig))
    roles = dict(frame.group_by("role").len().iter_rows())
    return versioned(
        frame,
        summary=", ".join(f"{roles[r]} {r}" for r in ("pool", "target", "validation", "off_target")),
        mix=config.mix,
        problems_by_role=dg.MetadataValue.json(roles),
    )


class ExperimentPretrainConfig(PretrainRunConfig):
    """The experiment's base policy: the built-in policy pre-trained on the mix's corpus (held-out sets excluded)."""

    mix: MixName = Field(default="realistic", description="the corpus's mix: the one experiment_problems drew from")


@dg.asset(group_name=GROUP, code_version="1", **gpu_step("transformers", manual=True))
def experiment_base_policy(
    context: dg.AssetExecutionContext,
    config: ExperimentPretrainConfig,
    task: TaskSettings,
    store: ArtifactStore,
    experiment_problems: pl.DataFrame,
) -> dg.Output[Checkpoint]:
    held_out = experiment_problems.filter(pl.col("role").is_in(["target", "validation", "off_target"]))["problem_id"]
    return pretrain_checkpoint(
        context, config, task, store, frozenset(held_out.to_list()), MIXES[config.mix], mix=config.mix
    )


class ExperimentRunConfig(config_view(ExperimentConfig)):
    """Seeds, arms, equal compute per arm and evaluation (core/evaluation/experiment.py ExperimentConfig; the defaults
    are the pre-registered design). The GRPO loss and its reference come from the `grpo_loss` resource."""


def _cache(step: Step):
    """The row-cache namespace of this experiment's per-seed tables: everything they depend on but the seed."""
    inputs = step.inputs
    config = step.config.model_dump(exclude={"seeds"})
    namespace = {
        "version": EXPERIMENT_ROWS_VERSION,
        "experiment": config,
        "problems": content_digest(inputs["experiment_problems"]),
        "base_policy": inputs["experiment_base_policy"].path.name,
        "features": dataclasses.asdict(FEATURES),
        "task": dataclasses.asdict(step.resources.task.config()),
        "grpo": step.resources.grpo_loss.model_dump(),
    }
    cache = step.resources.row_cache.cache()
    return cache.namespace("experiment_seeds", namespace)


def _seed_path(ns, seed: int, table: str) -> Path:
    return ns.path / f"seed-{seed}-{table}.parquet"


def _plan(step: Step) -> list[dict]:
    seeds = list(step.config.seeds)
    return [{"seeds": seeds[i::NUM_SHARDS]} for i in range(NUM_SHARDS)]


def _shard(step: Step, work: dict) -> dict:
    ns = _cache(step)
    config = settings(step.config, ExperimentConfig)
    grpo = GRPOConfig(**step.resources.grpo_loss.model_dump())
    task = step.resources.task.config()
    computed, seconds = [], {}
    todo = [seed for seed in work["seeds"] if not _seed_path(ns, seed, "accuracy").exists()]  # written last
    reused = [seed for seed in work["seeds"] if seed not in todo]
    models = load_policy(step.inputs["experiment_base_policy"].path) if todo else None
    runs_per_seed = len(config.arms) + len(config.coin_flip_arms)
    with step_progress(step.context, len(todo) * runs_per_seed, "arm runs") as progress:
        for seed in todo:
            started = time.perf_counter()
            result = run_seed(
                seed,
                *models,
                step.inputs["experiment_problems"],
                config,
                grpo,
                FEATURES,
                task,
                log=step.context.log.info,
                arm_done=lambda: progress({}),  # one tick per trained arm (curriculum rounds log but do not count)
            )
            for table in TABLES:
                atomic_write_bytes(_seed_path(ns, seed, table), frame_bytes(getattr(result, table)))
            seconds[str(seed)] = round(time.perf_counter() - started, 1)
            step.context.log.info(f"seed {seed} done in {seconds[str(seed)]:.0f} s")
            computed.append(seed)
    return {"computed": computed, "reused": reused, "seconds": seconds}


def _collect(step: Step, manifests: list[dict]):
    ns = _cache(step)
    seeds = list(step.config.seeds)
    tables = {t: pl.concat([pl.read_parquet(_seed_path(ns, s, t)) for s in seeds]) for t in TABLES}
    seconds = {k: v for m in manifests for k, v in m["seconds"].items()}
    computed = sorted(s for m in manifests for s in m["computed"])
    counts = f"{len(seeds)} seeds ({len(computed)} computed, {len(seeds) - len(computed)} from the cache)"
    for table in TABLES:
        yield versioned(
            tables[table],
            output_name=f"experiment_{table}",
            summary=counts if table == "accuracy" else f"{tables[table].height} rows",
            seeds=len(seeds),
            seconds_per_computed_seed=dg.MetadataValue.json(seconds),
            cache=dg.MetadataValue.path(str(ns.path)),
        )


experiment_runs = sharded_asset(
    name="experiment_runs",
    stage="experiment_seed",
    inputs=("experiment_problems", "experiment_base_policy"),
    config=ExperimentRunConfig,
    resources={"task", "grpo_loss", "row_cache"},
    outs={
        "experiment_accuracy": dg.AssetOut(
            code_version=EXPERIMENT_ROWS_VERSION,
            description="Per (seed, pool, arm, step, evaluation set): sampled pass@1.",
            **gpu_asset("transformers", manual=True),
        ),
        "experiment_selections": dg.AssetOut(
            code_version=EXPERIMENT_ROWS_VERSION,
            description="Per (seed, pool, arm, round): the selected problems with cell, p, score and noisy flag.",
            kinds={"polars"},
            tags=MANUAL,
        ),
        "experiment_diagnostics": dg.AssetOut(
            code_version=EXPERIMENT_ROWS_VERSION,
            description="Per seed: p classes per family and cell, Spearman(score, V), gradient cosines, seconds.",
            kinds={"polars"},
            tags=MANUAL,
        ),
    },
    plan=_plan,
    shard=_shard,
    collect=_collect,
    group_name=GROUP,
    description="Every seed of the experiment: warm-up, scoring, every arm trained and evaluated on both pools.",
)


class ExperimentReportConfig(dg.Config):
    png_dir: str | None = Field(
        default=None, description="also write the plot here (e.g. docs/); default: only under LEARNALIGN_HOME"
    )


def _contrast_table(contrasts: pl.DataFrame) -> str:
    lines = [
        "| family | pool | arm − comparator | mean (points) | 95% CI | sign-flip p | Holm p | reading | "
        "mean over steps | off-target | pool-weighted | steps to comparator's final | corrupted share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in contrasts.iter_rows(named=True):
        holm = f"{r['p_holm']:.3f}" if r["p_holm"] is not None else ""
        off, weighted = (
            f"{r[k]:+.1f}" if r[k] is not None else "" for k in ("off_target_points", "pool_weighted_points")
        )
        steps = r["median_steps_to_comparator_final"]
        reach = f"{steps:.0f} ({r['seeds_reaching_it']}/{r['seeds']} seeds)" if steps != float("inf") else "not reached"
        corrupted = r["arm_corrupted_share"] if r["pool"] == "coin_flip" else None
        share = f"{100 * corrupted:.0f}%" if corrupted is not None else ""
        lines.append(
            f"| {r['family']} | {r['pool']} | {r['arm']} − {r['comparator']} | {r['mean_points']:+.1f} | "
            f"[{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] | {r['p_sign_flip']:.4f} | {holm} | {verdict(r)} | "
            f"{r['auc_points']:+.1f} | {off} | {weighted} | {reach} | {share} |"
        )
    return "\n".join(lines)


def _corrupted_shares(selections: pl.DataFrame) -> pl.DataFrame:
    """Per rule on the coin-flip pool: the share of its picks whose rewards are coins, over all its picks (round
    "all") and, for the curriculum, per round (round 0 is a static rule's one selection)."""
    coin = selections.filter(pl.col("pool") == "coin_flip")
    share = [
        (100 * pl.col("noisy").mean()).round(1).alias("corrupted_percent"),
        pl.col("seed").n_unique().alias("seeds"),
    ]
    overall = coin.group_by("arm").agg(*share).with_columns(pl.lit("all").alias("round"))
    rounds = (
        coin.filter(pl.col("round") > 0)
        .group_by("arm", "round")
        .agg(*share)
        .with_columns(pl.col("round").cast(pl.String))
    )
    return (
        pl.concat([overall, rounds], how="diagonal")
        .select("arm", "round", "corrupted_percent", "seeds")
        .sort("arm", "round")
    )


def _family_mix(selections: pl.DataFrame) -> pl.DataFrame:
    with_family = selections.filter(pl.col("pool") == "clean").with_columns(
        pl.col("cell").str.split("/").list.first().alias("family")
    )
    return (
        with_family.group_by("arm", "family")
        .len()
        .with_columns((100 * pl.col("len") / pl.col("len").sum().over("arm")).round(1).alias("percent"))
        .pivot(on="family", index="arm", values="percent")
        .fill_null(0.0)
        .sort("arm")
    )


@dg.asset(group_name=GROUP, code_version="1", kinds={"polars", "duckdb"}, tags=MANUAL)
def experiment_report(
    context: dg.AssetExecutionContext,
    config: ExperimentReportConfig,
    duckdb: DuckDBResource,
    experiment_accuracy: pl.DataFrame,
    experiment_selections: pl.DataFrame,
    experiment_diagnostics: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """The pre-registered statistics (paired differences against Random, 95% t-intervals, exact sign-flip tests,
    Holm within the confirmatory and secondary families, the power check), the learning curves with 95% bands as a
    plot, the corrupted share of each arm's selection on the coin-flip pool, and the diagnostics; every run's rows
    are appended to the DuckDB tables `selection_experiment` and `selection_experiment_contrasts`."""
    contrasts = analyze(experiment_accuracy, experiment_selections)
    curve = curves(experiment_accuracy)
    seeds = int(experiment_accuracy["seed"].n_unique())
    last = int(experiment_accuracy["step"].max())
    title = f"sampled pass@1 (n=4, T=1) on held-out target problems; mean and 95% band over {seeds} seeds"
    png = plot_curves(curve, project_home() / "experiment" / f"curves_{content_digest(curve)[:16]}.png", title)
    if config.png_dir:
        Path(config.png_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.png_dir) / "selection_experiment.png").write_bytes(png.read_bytes())
    run_id = pl.lit(context.run_id).alias("run_id")
    append_to_duckdb(duckdb, "selection_experiment", experiment_accuracy.with_columns(run_id))
    if contrasts.height:
        append_to_duckdb(duckdb, "selection_experiment_contrasts", contrasts.with_columns(run_id))
    shares = experiment_diagnostics.filter(pl.col("metric").is_in(["p0", "learnable", "p1"]))
    histogram = (
        experiment_diagnostics.filter(pl.col("metric").str.starts_with("p_histogram:"))
        .with_columns(pl.col("metric").str.strip_prefix("p_histogram:").alias("family"))
        .group_by("family", "group")
        .agg((100 * pl.col("value").sum() / seeds).round(1).alias("percent"))
        .sort("group")
        .pivot(on="group", index="family", values="percent")
        .fill_null(0.0)
        .sort("family")
    )
    per_family = experiment_diagnostics.filter(pl.col("metric").str.ends_with("_by_family"))
    power = contrasts.filter(pl.col("family") == "power_check").to_dicts() if contrasts.height else []
    at_last = curve.filter(pl.col("step") == last).select("pool", "arm", "mean", "half_width")
    image = base64.b64encode(png.read_bytes()).decode()
    return versioned(
        contrasts,
        summary=f"{seeds} seeds; power check: {verdict(power[0]) if power else 'not run'}",
        contrasts=dg.MetadataValue.md(_contrast_table(contrasts) if contrasts.height else "(fewer than 2 seeds)"),
        accuracy_at_last_step=dg.MetadataValue.md(markdown_table(at_last, max_rows=30, float_digits=1)),
        corrupted_share_on_coin_flip_pool=dg.MetadataValue.md(markdown_table(_corrupted_shares(experiment_selections))),
        family_mix_of_selections=dg.MetadataValue.md(
            markdown_table(_family_mix(experiment_selections), float_digits=1)
        ),
        pool_p_shares=dg.MetadataValue.md(
            markdown_table(
                shares.group_by("metric")
                .agg(pl.col("value").mean(), pl.col("value").min().alias("min"), pl.col("value").max().alias("max"))
                .sort("metric")
            )
        ),
        p_histogram_by_family=dg.MetadataValue.md(markdown_table(histogram, float_digits=1)),
        p_shares_by_family=dg.MetadataValue.md(
            markdown_table(
                per_family.group_by("metric", "group").agg(pl.col("value").mean()).sort("group", "metric"), max_rows=40
            )
        ),
        diagnostics=dg.MetadataValue.md(
            markdown_table(
                experiment_diagnostics.filter(
                    pl.col("metric").is_in(["spearman_learnalign_score_vs_V", "mean_gradient_cosine", "seconds"])
                )
                .group_by("metric", "group")
                .agg(pl.col("value").mean())
                .sort("metric", "group"),
                max_rows=40,
            )
        ),
        plot=dg.MetadataValue.md(f"![accuracy vs steps](data:image/png;base64,{image})"),
        plot_path=dg.MetadataValue.path(str(png)),
        seeds=seeds,
        contrasts_json=dg.MetadataValue.json(json.loads(contrasts.write_json()) if contrasts.height else []),
    )
