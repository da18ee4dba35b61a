"""Greedy pass@1 of the pre-trained, warm-up and RL-trained policies on the held-out benchmark."""


import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ...core.artifacts import Checkpoint
from ...core.evaluation import pass_at_1
from ...core.generation import SamplingSpec
from ..constants import gpu_step
from ..generation import BackendName, Generator
from ..metadata import markdown_table
from ..resources import TaskSettings
from ..versioning import versioned


class BenchmarkRunConfig(dg.Config):
    """Greedy pass@1 always; optionally also the mean over n samples per problem (the RLVR papers' avg@n)."""

    backend: BackendName = Field(default="transformers", description="generation engine: transformers or vllm")
    fewshot: int = Field(
        default=0, description="worked exemplars before each question: the first n pool problems with a solution (lm-eval's first_n; 5 for gsm8k)"
    )
    sampled_n: int = Field(default=0, description="samples per problem for mean-of-n sampled pass@1 (0: greedy only)")
    sampled_temperature: float = Field(default=0.6, description="temperature of the sampled pass@1")
    sampled_top_p: float = Field(default=0.95, description="top-p of the sampled pass@1")


@dg.asset(group_name="evaluation", code_version="2", **gpu_step("transformers", "duckdb"))
def benchmark_results(
    context: dg.AssetExecutionContext,
    config: BenchmarkRunConfig,
    task: TaskSettings,
    generator: Generator,
    duckdb: DuckDBResource,
    benchmark_problems: pl.DataFrame,
    raw_problems: pl.DataFrame,
    pretrained_policy: Checkpoint,
    warmup_policy: Checkpoint,
    trained_policy: Checkpoint,
) -> dg.Output[pl.DataFrame]:
    """One row per policy: accuracy with the template, decoding and verifier it was measured with. Also appended
    to the `benchmark_results` table of the results DuckDB, keyed by run, for comparisons across runs."""
    benchmark = f"{benchmark_problems['source'][0]}:{benchmark_problems['split'][0]}" if benchmark_problems.height else "empty"
    verifier = task.make_verifier()
    exemplars = raw_problems.filter(pl.col("solution").is_not_null()).head(config.fewshot)
    prompt_format = task.prompt_format(shots=tuple(zip(exemplars["prompt"].to_list(), exemplars["solution"].to_list())))
    decodings = [SamplingSpec(num_samples=1, temperature=0.0, max_new_tokens=task.max_new_tokens)]
    if config.sampled_n:
        decodings.append(SamplingSpec(config.sampled_n, config.sampled_temperature, config.sampled_top_p, task.max_new_tokens))
    rows = []
    for name, checkpoint in [("pretrained", pretrained_policy), ("warmup", warmup_policy), ("trained", trained_policy)]:
        backend = generator.backend(config.backend, checkpoint)
        for spec in decodings:
            result, _ = pass_at_1(backend, benchmark_problems, verifier, prompt_format, spec, name, benchmark)
            rows.append({**result.as_row(), "checkpoint": checkpoint.path.name})
    table = pl.DataFrame(rows)
    _append_to_duckdb(duckdb, table.with_columns(pl.lit(context.run_id).alias("run_id")))
    greedy = table.filter(pl.col("decoding") == "greedy")
    accuracy = dict(zip(greedy["policy"].to_list(), greedy["accuracy"].to_list()))
    return versioned(
        table,
        accuracy_pretrained=accuracy["pretrained"],
        accuracy_warmup=accuracy["warmup"],
        accuracy_trained=accuracy["trained"],
        trained_minus_warmup_points=round(100 * (accuracy["trained"] - accuracy["warmup"]), 2),
        verifier_stats=dg.MetadataValue.json(getattr(verifier, "stats", {})),
        table=dg.MetadataValue.md(markdown_table(table.select("policy", "benchmark", "num_problems", "num_correct", "accuracy", "decoding", "template", "verifier"))),
    )


def _append_to_duckdb(duckdb: DuckDBResource, table: pl.DataFrame) -> None:
    with duckdb.get_connection() as conn:
        conn.register("incoming", table.to_arrow())
        conn.execute("CREATE TABLE IF NOT EXISTS benchmark_results AS SELECT * FROM incoming LIMIT 0")
        conn.execute("INSERT INTO benchmark_results BY NAME SELECT * FROM incoming")
        conn.unregister("incoming")
