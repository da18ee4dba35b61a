"""The selection-method comparison (LearnAlign's Table A in miniature): every method selects from the same pool
with the same materialized rollouts, success rates and gradients; each (method, budget, seed) is trained with the
same number of GRPO steps from the warm-up policy and evaluated on the benchmark minus the validation slice."""

import base64
import json
import shutil
import time
from pathlib import Path

import dagster as dg
import polars as pl
import torch
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ...core.evaluation.benchmark import pass_at_1
from ...core.evaluation.comparison import plot_accuracy_vs_budget, summarize, table_a
from ...core.policy.generation import SamplingSpec
from ...core.selection.methods import METHODS, select, trajectory_matrix
from ...core.storage.artifacts import Checkpoint, TensorBundle, content_digest
from ...lib.outputs import append_to_duckdb, markdown_table, versioned
from ...lib.resources import ArtifactStore, ComputeSettings, GRPOLoss, TaskSettings, TrainerSettings
from ...lib.tags import MANUAL, gpu_step
from ...lib.training import grpo_settings, grpo_stage_config, train_from
from ...paths import project_home
from ..selection.scores import pool_signals, selection_frame
from .signals import GROUP

# Table A's rows in this order (methods not run are skipped).
METHOD_ORDER = list(METHODS)


class SubsetsConfig(dg.Config):
    methods: list[str] = Field(
        default_factory=lambda: list(METHODS), description="methods to select with (all by default: selection is cheap)"
    )
    budgets: list[int] = Field(
        default_factory=lambda: [32, 128], description="budgets N (3% and 13% of the embedded pool)"
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2], description="seeds (they change the random and accuracy_band draws)"
    )


@dg.asset(group_name=GROUP, code_version="2", kinds={"polars"}, tags=MANUAL)
def comparison_subsets(
    config: SubsetsConfig,
    raw_problems: pl.DataFrame,
    success_rates: pl.DataFrame,
    projected_gradients: TensorBundle,
    validation_gradients: TensorBundle,
    cold_start_signals: TensorBundle,
    zero_variance_gradients: TensorBundle,
    answer_perplexity: pl.DataFrame,
    limr_trajectories: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """One row per (method, budget, seed, selected problem) with rank, score and the `noisy` flag; the metadata
    reports each method's share of noisy problems (pools with corrupted gold answers) and its overlap with LearnAlign."""
    ids = success_rates["problem_id"].to_list()
    for name, bundle in (
        ("cold_start_signals", cold_start_signals),
        ("zero_variance_gradients", zero_variance_gradients),
    ):
        if json.loads(bundle.metadata["problem_ids"]) != ids:
            raise ValueError(f"{name} rows do not follow success_rates; rematerialize it")
    ppl = pl.DataFrame({"problem_id": ids}).join(answer_perplexity, on="problem_id", how="left", maintain_order="left")
    signals = pool_signals(
        success_rates,
        projected_gradients,
        validation_features=validation_gradients.tensors["features"].float(),
        cold_success_rate=cold_start_signals.tensors["success_rate"].double(),
        cold_unit_features=cold_start_signals.tensors["unit_features"].float(),
        zero_variance_unit_features=zero_variance_gradients.tensors["unit_features"].float(),
        limr_trajectory=trajectory_matrix(limr_trajectories, ids),
        perplexity=torch.tensor(ppl["perplexity"].to_numpy()),
        unconditional_perplexity=torch.tensor(ppl["unconditional_perplexity"].to_numpy()),
    )
    frames = []
    for method in config.methods:
        for budget in config.budgets:
            for seed in config.seeds:
                chosen = select(method, signals, budget, seed)
                frame = selection_frame(signals, chosen.picked, chosen.scores, raw_problems)
                frames.append(
                    frame.select("problem_id", "rank", "score", "success_rate", "noisy").with_columns(
                        pl.lit(method).alias("method"), pl.lit(budget).alias("budget"), pl.lit(seed).alias("seed")
                    )
                )
    subsets = pl.concat(frames).select(
        "method", "budget", "seed", "rank", "problem_id", "score", "success_rate", "noisy"
    )
    stats = (
        subsets.group_by("method", "budget")
        .agg(
            pl.col("noisy").mean().alias("noisy_share"),
            pl.col("success_rate").mean().alias("mean_success_rate"),
            (pl.len() / pl.col("seed").n_unique()).alias("size"),
        )
        .sort("method", "budget")
    )
    pool_noisy = float(
        selection_frame(signals, list(range(len(ids))), torch.zeros(len(ids)), raw_problems)["noisy"].mean()
    )
    return versioned(
        subsets,
        pool_noisy_share=pool_noisy,
        per_method=dg.MetadataValue.md(markdown_table(stats, max_rows=100)),
    )


class ComparisonConfig(grpo_stage_config(steps=8, problems_per_step=16, num_samples=4)):
    """Each (method, budget, seed) run: GRPO from the warm-up policy with these settings (equal steps for every
    method: 8 x 16 = 4 epochs of N=32, 1 of N=128; G=4 keeps 33 runs within 30 minutes on 2 shared cores), then
    greedy pass@1 on `eval_problems` benchmark problems (the validation slice left out)."""

    methods: list[str] = Field(
        default_factory=lambda: ["learnalign", "gradalign", "random", "accgreedy", "limr", "full_data"],
        description="methods to train and evaluate (each must be in comparison_subsets)",
    )
    eval_problems: int = Field(
        default=300, description="benchmark problems evaluated (after removing the validation slice)"
    )


def _evaluate(backend, problems: pl.DataFrame, task: TaskSettings, verifier, name: str) -> dict:
    spec = SamplingSpec.greedy(task.max_new_tokens)
    result, _ = pass_at_1(backend, problems, verifier, task.prompt_format(), spec, name, "comparison")
    return {"accuracy": result.accuracy, "num_correct": result.num_correct, "num_problems": result.num_problems}


@dg.asset(group_name=GROUP, code_version="3", **gpu_step("transformers", "duckdb", manual=True))
def comparison_results(
    context: dg.AssetExecutionContext,
    config: ComparisonConfig,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    trainer: TrainerSettings,
    compute: ComputeSettings,
    store: ArtifactStore,
    duckdb: DuckDBResource,
    comparison_subsets: pl.DataFrame,
    raw_problems: pl.DataFrame,
    benchmark_problems: pl.DataFrame,
    validation_problems: pl.DataFrame,
    warmup_policy: Checkpoint,
    pretrained_policy: Checkpoint,
    full_data_policy: Checkpoint,
) -> dg.Output[pl.DataFrame]:
    """Accuracy of every (method, budget, seed) run, plus reference rows (warm-up policy; the multi-epoch
    full-data run LIMR scored from, `budget` = pool size). Also appended to the `selection_comparison` DuckDB table."""
    evaluation = benchmark_problems.join(validation_problems.select("problem_id"), on="problem_id", how="anti").head(
        config.eval_problems
    )
    verifier = task.make_verifier()
    started_all = time.perf_counter()
    plans = []  # (method, budget, seed, subset, problems); full data ignores the budget: trained once per seed
    for method in config.methods:
        chosen = comparison_subsets.filter(pl.col("method") == method)
        if chosen.height == 0:
            raise ValueError(f"comparison_subsets has no selection for {method!r}; add it to its methods")
        budgets = sorted(chosen["budget"].unique())
        for budget in budgets[:1] if method == "full_data" else budgets:
            for seed in sorted(chosen["seed"].unique()):
                subset = chosen.filter((pl.col("budget") == budget) & (pl.col("seed") == seed)).sort("rank")
                problems = subset.select("problem_id").join(
                    raw_problems, on="problem_id", how="left", maintain_order="left"
                )
                plans.append((method, int(budget), int(seed), subset, problems))
    trained = train_from(
        context,
        warmup_policy,
        pretrained_policy,
        [(problems, grpo_settings(config, grpo_loss, seed=seed)) for _, _, seed, _, problems in plans],
        task,
        grpo_loss,
        trainer,
        compute,
        store,
    )
    by_run, train_seconds = {}, 0.0
    for (method, budget, seed, subset, problems), run in zip(plans, trained, strict=True):
        model, tokenizer = compute.load_policy(run.staging)
        by_run[method, budget, seed] = {
            "method": method,
            "budget": budget,
            "seed": seed,
            "subset_size": problems.height,
            "noisy_share": float(subset["noisy"].mean()),
            "steps": len(run.history),
            "final_reward": run.history[-1]["reward_mean"],
            **_evaluate(compute.generation_backend(model, tokenizer), evaluation, task, verifier, method),
        }
        shutil.rmtree(run.staging, ignore_errors=True)  # evaluated; only its accuracy is kept
        train_seconds += run.train_seconds
        accuracy = by_run[method, budget, seed]["accuracy"]
        context.log.info(
            f"{method} N={budget} seed={seed}: accuracy {accuracy:.4f} ({run.train_seconds:.0f} s training)"
        )
    rows = []
    for method in config.methods:
        chosen = comparison_subsets.filter(pl.col("method") == method)
        budgets = sorted(chosen["budget"].unique())
        for budget in budgets:
            for seed in sorted(chosen["seed"].unique()):
                trained_budget = budgets[0] if method == "full_data" else budget
                rows.append({**by_run[method, int(trained_budget), int(seed)], "budget": int(budget)})
    for name, checkpoint in [
        ("warmup (no selection, start of every run)", warmup_policy),
        ("full data, LIMR reference run", full_data_policy),
    ]:
        model, tokenizer = compute.load_policy(checkpoint.path)
        steps = (
            json.loads((checkpoint.path / "training_config.json").read_text()).get("steps", 0)
            if name.startswith("full")
            else 0
        )
        rows.append(
            {
                "method": name,
                "budget": raw_problems.height if steps else 0,
                "seed": 0,
                "subset_size": raw_problems.height if steps else 0,
                "noisy_share": None,
                "steps": steps,
                "final_reward": None,
                **_evaluate(compute.generation_backend(model, tokenizer), evaluation, task, verifier, name),
            }
        )
    results = pl.DataFrame(rows, schema_overrides={"noisy_share": pl.Float64, "final_reward": pl.Float64})
    append_to_duckdb(duckdb, "selection_comparison", results.with_columns(pl.lit(context.run_id).alias("run_id")))
    return versioned(
        results,
        runs=len(rows),
        eval_problems=evaluation.height,
        steps_per_run=config.steps,
        train_seconds_total=round(train_seconds, 1),
        wall_seconds=round(time.perf_counter() - started_all, 1),
        results=dg.MetadataValue.md(markdown_table(results, max_rows=60)),
    )


class ReportConfig(dg.Config):
    png_dir: str | None = Field(
        default=None, description="also write the plot here (e.g. docs/); default: only under LEARNALIGN_HOME"
    )


@dg.asset(group_name=GROUP, code_version="1", kinds={"polars"}, tags=MANUAL)
def comparison_report(config: ReportConfig, comparison_results: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """Table A in miniature (rows: methods, columns: budgets, mean ± std over seeds in accuracy points) and a
    plot of accuracy against budget per method, as asset metadata and as a PNG."""
    runs = comparison_results.filter(pl.col("seed").is_not_null() & pl.col("method").is_in(list(METHODS)))
    summary = summarize(runs)
    references = {
        r["method"]: r["accuracy"]
        for r in comparison_results.filter(~pl.col("method").is_in(list(METHODS))).iter_rows(named=True)
    }
    extra = {name: f"{100 * acc:.1f}" for name, acc in references.items()}
    table = table_a(summary, [m for m in METHOD_ORDER if m in set(summary["method"])], extra)
    seeds = int(runs["seed"].n_unique()) if runs.height else 0
    steps = int(runs["steps"].max()) if runs.height else 0
    title = f"greedy pass@1 on {int(runs['num_problems'].max()) if runs.height else 0} held-out problems; mean ± std over {seeds} seeds; {steps} GRPO steps per run"
    digest = content_digest(summary)[:16]
    out_dir = project_home() / "comparison"
    png = plot_accuracy_vs_budget(
        summary,
        [m for m in METHOD_ORDER if m in set(summary["method"])],
        out_dir / f"accuracy_vs_budget_{digest}.png",
        title,
        references,
    )
    if config.png_dir:
        Path(config.png_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.png_dir) / "selection_comparison.png").write_bytes(png.read_bytes())
    image = base64.b64encode(png.read_bytes()).decode()
    return versioned(
        summary,
        table_a=dg.MetadataValue.md(f"{title}\n\n{table}"),
        plot=dg.MetadataValue.md(f"![accuracy vs budget](data:image/png;base64,{image})"),
        plot_path=dg.MetadataValue.path(str(png)),
    )
