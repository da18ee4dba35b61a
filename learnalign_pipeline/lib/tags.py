"""Tags of the heavy (accelerator) steps, so a cluster deployment places and limits them, and of the assets
that automation leaves to people."""

from __future__ import annotations

import os

# Requests for Dagster's Kubernetes executor / run launcher (dagster-k8s reads this op tag at launch). Op tags are
# fixed when the code location loads: LEARNALIGN_GPUS_PER_STEP (default 1; the vLLM engine's tensor_parallel_size)
# and LEARNALIGN_STEP_MEMORY (default 64Gi) size every accelerator step's pod.
GPUS_PER_STEP = os.environ.get("LEARNALIGN_GPUS_PER_STEP", "1")
GPU_K8S_CONFIG = {
    "container_config": {
        "resources": {
            "requests": {
                "nvidia.com/gpu": GPUS_PER_STEP,
                "cpu": "8",
                "memory": os.environ.get("LEARNALIGN_STEP_MEMORY", "64Gi"),
            },
            "limits": {"nvidia.com/gpu": GPUS_PER_STEP},
        }
    },
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}

# LEARNALIGN_GPU_POOL="" drops the pool, for the Dask executor: dagster-dask 0.29.27 cannot submit a run that has
# pooled steps (dask's task parser iterates the run's op-concurrency record, which dagster forbids). On Dask the
# worker resource below limits GPU steps instead. Launcher and workers must see the same value.
GPU_POOL = os.environ.get("LEARNALIGN_GPU_POOL", "gpu") or None

# Dask worker resources an accelerator step holds while it runs (dagster-dask reads this op tag): start each worker
# with `--resources GPU=<its GPUs>` so a worker runs as many GPU steps at once as it has GPUs, and the scheduler
# sends the next shard to a worker with a free GPU rather than to the one that holds the step's inputs.
DASK_GPU_RESOURCES = {"dagster-dask/resource_requirements": {"GPU": int(GPUS_PER_STEP)}}

# The op tags of every accelerator step, for each executor that places steps on hardware.
GPU_OP_TAGS = {"dagster-k8s/config": GPU_K8S_CONFIG, **DASK_GPU_RESOURCES}

# Run on demand (`learnalign compare`, `learnalign curriculum`), never by automation: they train dozens of policies.
MANUAL_TAG = "learnalign/automation"
MANUAL = {MANUAL_TAG: "manual"}


def gpu_op() -> dict:
    """Step-level keyword arguments of an accelerator step: the `gpu` pool (limit it with
    `dagster instance concurrency set gpu <n>`), k8s resource requests and the Dask worker resource."""
    return {"pool": GPU_POOL, "op_tags": GPU_OP_TAGS}


def gpu_asset(*kinds: str, manual: bool = False) -> dict:
    """Asset-level keyword arguments of an accelerator asset: kinds and a hardware tag (for `tag:hardware=gpu`)."""
    return {"kinds": {"pytorch", *kinds}, "tags": {"hardware": "gpu", **(MANUAL if manual else {})}}


def gpu_step(*kinds: str, manual: bool = False) -> dict:
    """Everything an @asset on an accelerator needs (for a @multi_asset use gpu_op and gpu_asset per output)."""
    return {**gpu_op(), **gpu_asset(*kinds, manual=manual)}
