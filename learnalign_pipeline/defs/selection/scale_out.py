"""The sharded stages on a Dask cluster: every shard of `rollouts_and_success_rates` and `projected_gradients` is
one Dask task. Point it at a scheduler with run config
`execution: {config: {cluster: {existing: {address: "tcp://host:8786"}}}}` (or `local: {...}` to start one).
Workers must reach the artifact and row-cache roots (shared storage on a real cluster) and see the same
`LEARNALIGN_HOME`. Launch with `LEARNALIGN_GPU_POOL=""` in the launcher's and the workers' environment:
dagster-dask 0.29.27 cannot submit a run with pooled steps (see `lib/tags.py` GPU_POOL). Start every worker with
`--resources GPU=<its GPUs>`: each shard holds `GPU=LEARNALIGN_GPUS_PER_STEP` while it runs (a worker without that
resource is never given a shard). Dask queues a stage's shards beside the plan step's output and its work stealing
moves them to workers with a free GPU.
"""

import dagster as dg
from dagster_dask import dask_executor

from ...lib.preflight import preflighted

SHARDED_STAGES = dg.AssetSelection.assets("rollouts", "success_rates", "projected_gradients")

sharded_stages_on_dask = dg.define_asset_job(
    "sharded_stages_on_dask",
    selection=SHARDED_STAGES,
    executor_def=preflighted(dask_executor),
    description="Rollouts and gradient features with each shard a Dask task (upstream assets must be materialized).",
)
