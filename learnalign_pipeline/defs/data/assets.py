"""The problems: a held-out benchmark split and the candidate pool that selection chooses from.

Each comes from the embedded arithmetic generator or a user's file (JSONL, Parquet, CSV or an HF `save_to_disk`
directory; see `core.loaders`). By default (`source="datasets"`) the file is the one the `datasets` resource names
and the observable sources in `sources.py` watch, so an edit to it re-runs these assets by automation. Rows a file
load rejects go to `rejected_problems` with their location and reason.

A load that rejects more than `max_rejected_share` of its rows, or accepts none, is refused: the rejected rows are
still published (they say what is wrong), the problem table is not, and the step fails with the counts. The last
good table therefore stays the one downstream assets read; a bad file never becomes "latest".
"""

import dataclasses
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from ...core.data.arithmetic import arithmetic_frame
from ...core.data.loaders import DUPLICATE_SCHEMA, REJECTED_SCHEMA, LoadReport, LoadResult, SourceConfig, load_problems
from ...core.data.noise import NoiseKind, mark_noisy
from ...lib.config import config_view
from ...lib.outputs import markdown_table, problem_summary, versioned
from ...lib.resources import ArithmeticSettings, DatasetFiles
from .sources import benchmark_dataset, pool_dataset

_SPEC_FIELDS = {f.name for f in dataclasses.fields(SourceConfig)} - {"path", "split"}


class ProblemSourceConfig(config_view(SourceConfig, exclude={"split"})):
    """Where a split's problems come from. `source="datasets"` loads the file the `datasets` resource names (the
    watched one; the embedded generator when it names none), `"arithmetic"` generates them, `"file"` loads `path`
    (column mapping: core/data/loaders.py SourceConfig)."""

    source: Literal["datasets", "arithmetic", "file"] = Field(
        default="datasets",
        description="datasets: the watched file of the `datasets` resource (generator if unset); arithmetic; file: `path`",
    )
    max_rejected_share: float = Field(
        default=0.05, ge=0, le=1, description="the load is refused above this share of rows rejected"
    )

    def file_path(self, split: str, datasets: DatasetFiles) -> str:
        """The file this split loads, or "" for the embedded generator."""
        if self.source == "file":
            if not self.path:
                raise ValueError("source='file' needs a path")
            return self.path
        return datasets.path_for(split) if self.source == "datasets" else ""

    def spec(self, split: str, path: str) -> SourceConfig:
        return SourceConfig(**self.model_dump(include=_SPEC_FIELDS), path=path, split=split)


class BenchmarkConfig(ProblemSourceConfig):
    """The held-out test split."""

    num_problems: int = Field(
        default=1000, ge=1, description="arithmetic source: problems generated for the benchmark split"
    )
    seed: int = Field(default=2, description="arithmetic source: generator seed of the benchmark split")


class PoolConfig(ProblemSourceConfig):
    """The candidate pool; problems that also occur in the benchmark are collapsed as duplicates."""

    num_problems: int = Field(default=1024, ge=1, description="arithmetic source: problems generated for the pool")
    seed: int = Field(default=1, description="arithmetic source: generator seed of the pool")
    noisy_share: float = Field(
        default=0.0, ge=0, le=1, description="share of pool problems given a wrong gold answer (unreliable rewards)"
    )
    noise_kind: NoiseKind = Field(
        default="wrong",
        description="wrong: gold + a nonzero offset; random: another noisy problem's gold; coin_flip: gold kept, "
        "every rollout's reward is a fair coin (keyed by problem and rollout seed)",
    )
    noise_seed: int = Field(default=0, description="seed choosing the noisy problems")


def _load(
    config: ProblemSourceConfig,
    datasets: DatasetFiles,
    arithmetic: ArithmeticSettings,
    split: str,
    exclude_ids: frozenset[str],
) -> LoadResult:
    """Load or generate one split; generated splits report repeats and overlap as duplicates too. A split named in
    the dataset settings file (`learnalign dataset`) loads with the mapping written there."""
    configured = datasets.configured(split) if config.source == "datasets" else None
    if configured:
        return load_problems(configured, exclude_ids)
    path = config.file_path(split, datasets)
    if path:
        return load_problems(config.spec(split, path), exclude_ids)
    mix = arithmetic.arithmetic_mix()
    frame = arithmetic_frame(config.num_problems, config.seed, split=split, exclude_ids=exclude_ids, mix=mix)
    report = LoadReport(config.num_problems, frame.height, 0, config.num_problems - frame.height)
    return LoadResult(frame, pl.DataFrame(schema=REJECTED_SCHEMA), pl.DataFrame(schema=DUPLICATE_SCHEMA), report)


def _summary(result: LoadResult) -> str:
    r = result.report
    return f"{r.accepted} problems ({r.rows_read} read, {r.rejected} rejected, {r.duplicates_collapsed} duplicates)"


def _refusal(result: LoadResult, config: ProblemSourceConfig, path: str, asset: str, rejected_asset: str) -> str | None:
    """Why this load must not become `asset`'s latest table, or None."""
    r = result.report
    share = r.rejected / r.rows_read if r.rows_read else 0.0
    source = path or "the arithmetic generator"
    if r.accepted == 0:
        return (
            f"{source}: no problem accepted ({r.rows_read} rows read, {r.rejected} rejected, {r.duplicates_collapsed} "
            f"duplicates); {asset} keeps its last good version. See {rejected_asset} for each row's location and reason"
        )
    if share > config.max_rejected_share:
        return (
            f"{source}: {r.rejected} of {r.rows_read} rows rejected ({share:.2%}), above max_rejected_share "
            f"{config.max_rejected_share:.2%}; {asset} keeps its last good version. See {rejected_asset} for each "
            "row's location and reason, fix the file or raise max_rejected_share"
        )
    return None


def _accepted_table(
    result: LoadResult, config: ProblemSourceConfig, path: str, asset: str, rejected_asset: str
) -> dg.Output:
    """The loaded problems as `asset`'s output, or a failure when the load must not become its latest table (the
    rejected rows are yielded before this, so they are kept either way)."""
    refusal = _refusal(result, config, path, asset, rejected_asset)
    if refusal:
        raise dg.Failure(description=refusal, metadata=_load_metadata(result, config, path))
    return versioned(
        result.problems,
        output_name=asset,
        summary=_summary(result),
        **_load_metadata(result, config, path),
        **problem_summary(result.problems),
    )


def _load_metadata(result: LoadResult, config: ProblemSourceConfig, path: str) -> dict:
    report = result.report
    rejected_share = report.rejected / report.rows_read if report.rows_read else 0.0
    reasons = result.rejected.group_by("kind").len().sort("kind")
    return {
        **report.as_dict(),
        "rejected_share": rejected_share,
        "max_rejected_share": config.max_rejected_share,
        "source": path or "arithmetic",
        "rejected_by_kind": dg.MetadataValue.json(dict(zip(reasons["kind"].to_list(), reasons["len"].to_list()))),
        "duplicates_preview": dg.MetadataValue.md(markdown_table(result.duplicates, max_rows=5)),
    }


@dg.multi_asset(
    outs={
        "benchmark_problems": dg.AssetOut(
            is_required=False,
            group_name="data",
            code_version="4",
            kinds={"polars"},
            description="Held-out problems for greedy pass@1 of every policy; never trained on.",
        ),
        "benchmark_rejected_problems": dg.AssetOut(
            is_required=False,
            group_name="data",
            code_version="2",
            kinds={"polars"},
            description="Benchmark rows the load rejected, with location and reason.",
        ),
    },
    deps=[benchmark_dataset],
    can_subset=True,  # either table can be rematerialized alone; loading is cheap and deterministic
)
def benchmark_problems(
    context: dg.AssetExecutionContext, config: BenchmarkConfig, datasets: DatasetFiles, arithmetic: ArithmeticSettings
):
    path = config.file_path("test", datasets)
    result = _load(config, datasets, arithmetic, "test", frozenset())
    if "benchmark_rejected_problems" in context.selected_output_names:
        yield versioned(
            result.rejected,
            output_name="benchmark_rejected_problems",
            summary=f"{result.rejected.height} rows",
            num_rows=result.rejected.height,
        )
    if "benchmark_problems" in context.selected_output_names:
        yield _accepted_table(result, config, path, "benchmark_problems", "benchmark_rejected_problems")


@dg.multi_asset(
    outs={
        "raw_problems": dg.AssetOut(
            is_required=False,
            group_name="data",
            code_version="5",
            kinds={"polars"},
            description="The candidate pool with stable content-hash ids, disjoint from the benchmark.",
        ),
        "rejected_problems": dg.AssetOut(
            is_required=False,
            group_name="data",
            code_version="2",
            kinds={"polars"},
            description="Every row rejected from the benchmark and pool loads, with its location and reason.",
        ),
    },
    deps=[pool_dataset],
    can_subset=True,
)
def raw_problems(
    context: dg.AssetExecutionContext,
    config: PoolConfig,
    datasets: DatasetFiles,
    arithmetic: ArithmeticSettings,
    benchmark_problems: pl.DataFrame,
    benchmark_rejected_problems: pl.DataFrame,
):
    path = config.file_path("pool", datasets)
    result = _load(config, datasets, arithmetic, "pool", frozenset(benchmark_problems["problem_id"].to_list()))
    # noisy problems are marked in `extra` ("noisy": true, clean answer kept), so subsets report their noisy share
    if config.noisy_share:
        result = dataclasses.replace(
            result, problems=mark_noisy(result.problems, config.noisy_share, config.noise_kind, config.noise_seed)
        )
    rejected = pl.concat([benchmark_rejected_problems, result.rejected])
    if "rejected_problems" in context.selected_output_names:
        yield versioned(
            rejected,
            output_name="rejected_problems",
            summary=f"{rejected.height} rows",
            num_rows=rejected.height,
            preview=dg.MetadataValue.md(
                markdown_table(rejected.select("split", "location", "kind", "reason"), max_rows=10)
            ),
        )
    if "raw_problems" in context.selected_output_names:
        yield _accepted_table(result, config, path, "raw_problems", "rejected_problems")
