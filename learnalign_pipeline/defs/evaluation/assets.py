"""Greedy pass@1 of the pre-trained, warm-up and RL-trained policies on the held-out benchmark."""


import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ...core.artifacts import Checkpoint
from ...core.evaluation import greedy_pass_at_1
from ..constants import gpu_step
from ..generation import BackendName, Generator
from ..metadata import markdown_table
from ..resources import TaskSettings
from ..versioning import versioned


class BenchmarkRunConfig(dg.Config):
    backend: BackendName = Field(default="transformers", description="generation engine: transformers or vllm")


@dg.asset(group_name="evaluation", code_version="2", **gpu_step("transformers", "duckdb"))
def benchmark_results(
    context: dg.AssetExecutionContext,
    config: BenchmarkRunConfig,
    task: TaskSettings,
    generator: Generator,
    duckdb: DuckDBResource,
    benchmark_problems: pl.DataFrame,
    pretrained_policy: Checkpoint,
    warmup_policy: Checkpoint,
    trained_policy: Checkpoint,
) -> dg.Output[pl.DataFrame]:
    """One row per policy: accuracy with the template, decoding and verifier it was measured with. Also appended
    to the `benchmark_results` table of the results DuckDB, keyed by run, for comparisons across runs."""
    benchmark = f"{benchmark_problems['source'][0]}:{benchmark_problems['split'][0]}" if benchmark_problems.height else "empty"
    verifier = task.make_verifier()
    rows = []
    for name, checkpoint in [("pretrained", pretrained_policy), ("warmup", warmup_policy), ("trained", trained_policy)]:
        result, _ = greedy_pass_at_1(
            generator.backend(config.backend, checkpoint), benchmark_problems, verifier, task.template, task.max_new_tokens, name, benchmark
        )
        rows.append({**result.as_row(), "checkpoint": checkpoint.path.name})
    table = pl.DataFrame(rows)
    _append_to_duckdb(duckdb, table.with_columns(pl.lit(context.run_id).alias("run_id")))
    accuracy = dict(zip(table["policy"].to_list(), table["accuracy"].to_list()))
    return versioned(
        table,
        accuracy_pretrained=accuracy["pretrained"],
        accuracy_warmup=accuracy["warmup"],
        accuracy_trained=accuracy["trained"],
        trained_minus_warmup_points=round(100 * (accuracy["trained"] - accuracy["warmup"]), 2),
        verifier_stats=dg.MetadataValue.json(getattr(verifier, "stats", {})),
        table=dg.MetadataValue.md(markdown_table(table.select("policy", "benchmark", "num_problems", "num_correct", "accuracy", "decoding", "verifier"))),
    )


def _append_to_duckdb(duckdb: DuckDBResource, table: pl.DataFrame) -> None:
    with duckdb.get_connection() as conn:
        conn.register("incoming", table.to_arrow())
        conn.execute("CREATE TABLE IF NOT EXISTS benchmark_results AS SELECT * FROM incoming LIMIT 0")
        conn.execute("INSERT INTO benchmark_results BY NAME SELECT * FROM incoming")
        conn.unregister("incoming")
