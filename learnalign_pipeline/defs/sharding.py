"""What sharded stages share: the row cache as a resource, and a JSON IO manager for the small values passed
between a stage's plan, shard and collect steps (shard lists and counts; the data itself is in the row cache).

Each sharded asset is a graph: a plan step with one output per shard, `NUM_SHARDS` shard steps, and a collect
step. Every shard is its own executor step, so the multiprocess, Dask or Kubernetes executors run them in
parallel, while the in-process executor (`learnalign demo`, tests) runs them one after another, and a whole-graph
run stays one run. The shard count is fixed in the definitions rather than dynamic (`DynamicOut`) because the
Dask executor (dagster-dask 0.29.27) plans its steps once, before any dynamic output exists, and never runs mapped
steps. (Static partitions were the other option; a job mixing partitioned and unpartitioned assets needs one run
per partition key, and the unpartitioned assets run in each of them, so the graph would no longer be one command.)
Results never depend on the shard count: shards only decide where rows are computed.
"""

import json
from pathlib import Path

import dagster as dg

from ..core.artifacts import atomic_write_bytes
from ..core.row_cache import RowCache

STEP_IO_MANAGER = "step_io_manager"
NUM_SHARDS = 4  # shard steps per sharded stage; a row's shard is its content hash modulo this


class RowCacheResource(dg.ConfigurableResource):
    """Where rollouts and gradient features are cached row by row (shared storage when steps run on several
    machines)."""

    root: str

    def cache(self) -> RowCache:
        return RowCache(self.root)


class JsonStepIOManager(dg.ConfigurableIOManager):
    """Stores an op output (a JSON value) at `<root>/.steps/<run id>/<step key>/<output>.json`, atomically."""

    root: str

    def _path(self, context: dg.OutputContext) -> Path:
        name = context.name + (f"[{context.mapping_key}]" if context.mapping_key else "")
        return Path(self.root) / ".steps" / context.run_id / context.step_key / f"{name}.json"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        atomic_write_bytes(self._path(context), json.dumps(obj, sort_keys=True).encode())

    def load_input(self, context: dg.InputContext):
        return json.loads(self._path(context.upstream_output).read_bytes())


def shard_key(shard: int) -> str:
    return f"shard_{shard}"


def merge_counts(manifests: list[dict], field: str) -> dict:
    """Sum the numeric counts each shard reported under `field`."""
    total: dict = {}
    for manifest in manifests:
        for name, value in manifest.get(field, {}).items():
            if isinstance(value, (int, float)):
                total[name] = total.get(name, 0) + value
    return total
