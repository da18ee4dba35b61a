"""Rollouts of the warm-up policy on the pool and each problem's success rate p (LearnAlign step 2)."""


import time

import dagster as dg
import polars as pl
from pydantic import Field

from ...core.artifacts import Checkpoint
from ...core.generation import SamplingSpec
from ...core.rollouts import learnable_problems, sample_rollouts, success_rates
from ..constants import gpu_asset, gpu_op
from ..generation import BackendName, Generator
from ..metadata import markdown_table
from ..resources import TaskSettings
from ..versioning import versioned


class RolloutConfig(dg.Config):
    """K samples per pool problem from the warm-up policy (LearnAlign: K = 8 at temperature 1.0)."""

    num_samples: int = Field(default=8, description="samples per problem (K)")
    temperature: float = Field(default=1.0, description="sampling temperature")
    top_p: float = Field(default=1.0, description="nucleus sampling threshold")
    seed: int = Field(default=0, description="base seed; a problem's seed derives from it and the problem id")
    backend: BackendName = Field(default="transformers", description="generation engine: transformers or vllm")


def _rate_histogram(rates: pl.DataFrame) -> str:
    hist = rates.group_by("num_correct").len().sort("num_correct").rename({"len": "problems"})
    return markdown_table(hist.with_columns((pl.col("problems") / rates.height).alias("share")))


@dg.multi_asset(
    group_name="selection",
    outs={
        "rollouts": dg.AssetOut(
            code_version="1", description="One row per (problem, sample): completion, token ids, reward.", **gpu_asset("transformers")
        ),
        "success_rates": dg.AssetOut(
            code_version="1", description="Per problem: samples, successes and success rate p.", **gpu_asset("transformers")
        ),
    },
    **gpu_op(),
)
def rollouts_and_success_rates(
    config: RolloutConfig, task: TaskSettings, generator: Generator, raw_problems: pl.DataFrame, warmup_policy: Checkpoint
):
    backend = generator.backend(config.backend, warmup_policy)
    spec = SamplingSpec(num_samples=config.num_samples, temperature=config.temperature, top_p=config.top_p, max_new_tokens=task.max_new_tokens)
    started = time.perf_counter()
    verifier = task.make_verifier()
    rollouts = sample_rollouts(backend, raw_problems, spec, verifier, task.prompt_format(), config.seed)
    seconds = time.perf_counter() - started
    rates = success_rates(rollouts)
    learnable = learnable_problems(rates).height
    yield versioned(
        rollouts,
        output_name="rollouts",
        generated_tokens=int(rollouts["num_tokens"].sum()),
        tokens_per_second=round(float(rollouts["num_tokens"].sum()) / seconds, 1),
        truncated_share=float((rollouts["finish_reason"] == "length").mean()),
        backend=backend.name,
        verifier_stats=dg.MetadataValue.json(getattr(verifier, "stats", {})),  # math-verify timeouts and parse failures
    )
    yield versioned(
        rates,
        output_name="success_rates",
        mean_success_rate=float(rates["success_rate"].mean()),
        learnable_share=learnable / rates.height,
        success_histogram=dg.MetadataValue.md(_rate_histogram(rates)),
    )
