"""Greedy and sampled pass@1 of the pre-trained, warm-up and RL-trained policies on the held-out benchmark."""

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from ...core.evaluation.benchmark import BenchmarkConfig, pass_at_1, with_intervals
from ...core.evaluation.charts import accuracy_by_family, accuracy_chart
from ...core.storage.artifacts import Checkpoint
from ...lib.charts import image
from ...lib.charts import table as metadata_table
from ...lib.config import config_view, settings
from ...lib.outputs import append_to_duckdb, markdown_table, versioned
from ...lib.resources import ComputeSettings, Generator, TaskSettings
from ...lib.tags import gpu_step

# The columns people read; the artifact and the DuckDB table hold every column.
TABLE_COLUMNS = [
    "policy",
    "benchmark",
    "num_problems",
    "num_correct",
    "accuracy",
    "low",
    "high",
    "decoding",
    "template",
    "verifier",
]


class BenchmarkRunConfig(config_view(BenchmarkConfig)):
    """Greedy pass@1 always; also the mean over n samples per problem unless sampled_n is 0
    (core/evaluation/benchmark.py)."""


@dg.asset(group_name="evaluation", code_version="4", **gpu_step("transformers", "duckdb"))
def benchmark_results(
    context: dg.AssetExecutionContext,
    config: BenchmarkRunConfig,
    task: TaskSettings,
    generator: Generator,
    compute: ComputeSettings,
    duckdb: DuckDBResource,
    benchmark_problems: pl.DataFrame,
    raw_problems: pl.DataFrame,
    pretrained_policy: Checkpoint,
    warmup_policy: Checkpoint,
    trained_policy: Checkpoint,
) -> dg.Output[pl.DataFrame]:
    """One row per policy: accuracy with the template, decoding and verifier it was measured with. Also appended
    to the `benchmark_results` table of the results DuckDB, keyed by run, for comparisons across runs."""
    bench = settings(config, BenchmarkConfig)
    benchmark = (
        f"{benchmark_problems['source'][0]}:{benchmark_problems['split'][0]}" if benchmark_problems.height else "empty"
    )
    verifier = task.make_verifier()
    exemplars = raw_problems.filter(pl.col("solution").is_not_null()).head(bench.fewshot)
    prompt_format = task.prompt_format(shots=tuple(zip(exemplars["prompt"].to_list(), exemplars["solution"].to_list())))
    rows, greedy_outcomes = [], []
    try:  # one engine at a time: asking for the next checkpoint's engine shuts the previous one down
        for name, checkpoint in [
            ("pretrained", pretrained_policy),
            ("warmup", warmup_policy),
            ("trained", trained_policy),
        ]:
            backend = generator.backend(bench.backend, checkpoint, compute.config())
            for spec in bench.decodings(task.max_new_tokens):
                result, samples = pass_at_1(backend, benchmark_problems, verifier, prompt_format, spec, name, benchmark)
                rows.append({**result.as_row(), "checkpoint": checkpoint.path.name})
                if spec.temperature == 0:
                    greedy_outcomes.append(samples.select("policy", "problem_id", "reward"))
    finally:
        generator.close_engine()
    table = pl.DataFrame(rows)
    append_to_duckdb(duckdb, "benchmark_results", table.with_columns(pl.lit(context.run_id).alias("run_id")))
    table = with_intervals(table)  # in the artifact and the printed table; the DuckDB table keeps its columns
    greedy = table.filter(pl.col("decoding") == "greedy")
    accuracy = dict(zip(greedy["policy"].to_list(), greedy["accuracy"].to_list()))
    gain = round(100 * (accuracy["trained"] - accuracy["warmup"]), 2)
    sampled = table.filter(pl.col("decoding") != "greedy")
    sampled_accuracy = dict(zip(sampled["policy"].to_list(), sampled["accuracy"].to_list()))
    sampled_summary = (
        f"; sampled pass@1 (n={bench.sampled_n}, T={bench.sampled_temperature:g}): "
        + ", ".join(f"{label} {sampled_accuracy[p]:.1%}" for p, label in POLICY_LABELS.items())
        if sampled_accuracy
        else ""
    )
    families = accuracy_by_family(
        pl.concat(greedy_outcomes).join(
            benchmark_problems.select("problem_id", "category"), on="problem_id", how="left"
        )
    )
    return versioned(
        table,
        summary=f"greedy pass@1: pretrained {accuracy['pretrained']:.1%}, warm-up {accuracy['warmup']:.1%}, trained {accuracy['trained']:.1%} ({gain:+.1f} points){sampled_summary}",
        accuracy_pretrained=accuracy["pretrained"],
        accuracy_warmup=accuracy["warmup"],
        accuracy_trained=accuracy["trained"],
        **{f"sampled_accuracy_{p}": a for p, a in sampled_accuracy.items()},
        trained_minus_warmup_points=gain,
        verifier_stats=dg.MetadataValue.json(getattr(verifier, "stats", {})),
        table=dg.MetadataValue.md(markdown_table(table.select(TABLE_COLUMNS))),
        accuracy_by_family=metadata_table(families, descriptions=FAMILY_COLUMNS),
        accuracy_by_family_chart=image(
            accuracy_chart(families, "greedy pass@1 by family (Wilson 95% interval)"), "accuracy by family"
        ),
    )


POLICY_LABELS = {"pretrained": "pretrained", "warmup": "warm-up", "trained": "trained"}
FAMILY_COLUMNS = {
    "family": "the benchmark problems' category",
    "problems": "benchmark problems in the family",
    "correct": "solved with greedy decoding",
    "accuracy": "greedy pass@1 within the family",
    "low": "Wilson 95% interval, lower bound",
    "high": "Wilson 95% interval, upper bound",
}
