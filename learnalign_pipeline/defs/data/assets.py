"""The problems: a held-out benchmark split and the candidate pool that selection chooses from."""


import dagster as dg
import polars as pl
from pydantic import Field

from ...core.arithmetic import arithmetic_frame
from ..metadata import problem_summary
from ..versioning import versioned


class BenchmarkConfig(dg.Config):
    """The held-out test split of the embedded arithmetic task."""

    num_problems: int = Field(default=1000, description="problems generated for the benchmark split")
    seed: int = Field(default=2, description="generator seed of the benchmark split")


class PoolConfig(dg.Config):
    """The candidate pool of the embedded arithmetic task; problems that also occur in the benchmark are dropped."""

    num_problems: int = Field(default=1024, description="problems generated for the pool")
    seed: int = Field(default=1, description="generator seed of the pool")


@dg.asset(group_name="data", code_version="1", kinds={"polars"})
def benchmark_problems(config: BenchmarkConfig) -> dg.Output[pl.DataFrame]:
    """Held-out problems for greedy pass@1 of every policy; never trained on."""
    frame = arithmetic_frame(config.num_problems, config.seed, split="test")
    return versioned(frame, **problem_summary(frame))


@dg.asset(group_name="data", code_version="1", kinds={"polars"})
def raw_problems(config: PoolConfig, benchmark_problems: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """The candidate pool as a table with stable content-hash ids, disjoint from the benchmark."""
    exclude = frozenset(benchmark_problems["problem_id"].to_list())
    frame = arithmetic_frame(config.num_problems, config.seed, split="pool", exclude_ids=exclude)
    return versioned(frame, dropped_repeats_or_benchmark_overlap=config.num_problems - frame.height, **problem_summary(frame))
