"""One builder for sharded stages: an asset computed by a plan step, `NUM_SHARDS` shard steps and a collect step.

Every shard is its own executor step, so the multiprocess, Dask or Kubernetes executors run them in parallel
(each in the `gpu` pool, with k8s GPU requests), while the in-process executor (`learnalign demo`, tests) runs
them one after another, and a whole-graph run stays one run. The shard count is fixed in the definitions rather
than dynamic (`DynamicOut`) because the Dask executor (dagster-dask 0.29.27) plans its steps once, before any
dynamic output exists, and never runs mapped steps. (Static partitions were the other option; a job mixing
partitioned and unpartitioned assets needs one run per partition key, and the unpartitioned assets run in each of
them, so the graph would no longer be one command.) Results never depend on the shard count: shards only decide
where rows are computed (`core/selection/stages.py`).

A stage supplies three functions of a `Step` (its context, typed config, resources and input values): `plan`
returns one JSON value per shard, `shard` does one shard's work and returns a JSON manifest, `collect` yields the
stage's outputs. The JSON values travel through `JsonStepIOManager`; the rows themselves live in the row cache.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg

from ..core.compute import visible_gpus
from .io_managers import STEP_IO_MANAGER
from .tags import GPU_OP_TAGS, GPU_POOL

# Shard steps per sharded stage; a row's shard is its content hash modulo this. The graph is static, so the count
# is read when the code location loads: set LEARNALIGN_NUM_SHARDS to the number of GPUs (or of GPU groups of
# `generator.tensor_parallel_size`) the shard steps should spread over. Results never depend on it.
# Unset, it is one shard per visible GPU (four on a CPU machine, where shards only split the work); the run
# preflight refuses more shards than GPU groups (core/compute.py `device_problems`).
NUM_SHARDS = int(os.environ.get("LEARNALIGN_NUM_SHARDS") or visible_gpus() or 4)


@dataclass(frozen=True)
class Step:
    """What a stage's step function receives."""

    context: dg.OpExecutionContext
    config: Any  # the stage's typed config (a dg.Config view)
    inputs: dict[str, Any]  # upstream asset values by name

    @property
    def resources(self):
        return self.context.resources


def merge_counts(manifests: list[dict], field: str) -> dict:
    """Sum the numeric counts each shard reported under `field`."""
    total: dict = {}
    for manifest in manifests:
        for name, value in manifest.get(field, {}).items():
            if isinstance(value, (int, float)):
                total[name] = total.get(name, 0) + value
    return total


def dropped_files(manifests: list[dict], cache) -> list[str]:
    """Names of the row-cache files the shards (and the collect step's `cache`) found corrupted and moved aside."""
    return sorted({name for m in manifests for name in m.get("dropped_files", [])} | set(cache.dropped))


def sharded_asset(
    *,
    name: str,
    stage: str,
    inputs: tuple[str, ...],
    config: type[dg.Config],
    resources: set[str],
    outs: dict[str, dg.AssetOut],
    plan: Callable[[Step], list[Any]],
    shard: Callable[[Step, Any], dict],
    collect: Callable[[Step, list[dict]], Iterator[dg.Output]],
    group_name: str,
    description: str | None = None,
) -> dg.AssetsDefinition:
    """The graph-backed asset `name` (outputs `outs`) of a sharded stage; its steps are `plan_<stage>_shards`,
    `<stage>_shard_<i>` and `collect_<stage>s`, all configured by one `config` (run config `ops: {name: ...}`)."""
    schema = config.to_config_schema()

    def step(context, values) -> Step:
        return Step(context, config(**context.op_config), {n: values[n] for n in inputs})

    def plan_compute(context, values):
        work = plan(step(context, values))
        if len(work) != NUM_SHARDS:
            raise ValueError(f"{stage}: plan returned {len(work)} shards, expected {NUM_SHARDS}")
        for i, item in enumerate(work):
            yield dg.Output(item, f"shard_{i}")

    def shard_compute(context, values):
        yield dg.Output(shard(step(context, values), values["work"]), "manifest")

    def collect_compute(context, values):
        yield from collect(step(context, values), values["manifests"])

    ins = {n: dg.In() for n in inputs}
    plan_op = dg.OpDefinition(
        name=f"plan_{stage}_shards",
        ins=ins,
        outs={f"shard_{i}": dg.Out(io_manager_key=STEP_IO_MANAGER) for i in range(NUM_SHARDS)},
        compute_fn=plan_compute,
        config_schema=schema,
        required_resource_keys=resources,
    )
    shard_op = dg.OpDefinition(
        name=f"{stage}_shard",
        ins={**ins, "work": dg.In()},
        outs={"manifest": dg.Out(io_manager_key=STEP_IO_MANAGER)},
        compute_fn=shard_compute,
        config_schema=schema,
        required_resource_keys=resources,
        pool=GPU_POOL,
        tags=GPU_OP_TAGS,
    )
    collect_op = dg.OpDefinition(
        name=f"collect_{stage}s",
        ins={**ins, "manifests": dg.In()},
        outs={n: dg.Out() for n in outs},
        compute_fn=collect_compute,
        config_schema=schema,
        required_resource_keys=resources,
    )
    step_names = [plan_op.name, collect_op.name, *(f"{stage}_shard_{i}" for i in range(NUM_SHARDS))]

    def compose(**values):
        work = plan_op(**values)
        manifests = [shard_op.alias(f"{stage}_shard_{i}")(**values, work=work[i]) for i in range(NUM_SHARDS)]
        result = collect_op(**values, manifests=manifests)
        return dict(zip(outs, result)) if len(outs) > 1 else {next(iter(outs)): result}

    # The graph's inputs are the upstream assets; Dagster reads them from the compose function's signature.
    compose.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in inputs]
    )
    compose.__name__ = name
    compose.__doc__ = description

    def fan_out(values: dict) -> dict:
        values = config(**values).model_dump()
        return {op: {"config": values} for op in step_names}

    return dg.graph_multi_asset(
        name=name, group_name=group_name, outs=outs, config=dg.ConfigMapping(config_fn=fan_out, config_schema=schema)
    )(compose)
