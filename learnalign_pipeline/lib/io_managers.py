"""IO managers. Asset values become content-addressed, verified artifact files (never a pickle); the small JSON
values a sharded stage passes between its plan, shard and collect steps are files of their own."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl

from ..core.storage.artifacts import (
    ArtifactIntegrityError,
    TensorBundle,
    atomic_write_bytes,
    read_artifact,
    write_artifact,
)
from .charts import column_schema

STEP_IO_MANAGER = "step_io_manager"


def recorded_artifact(metadata, root: str | Path, key: dg.AssetKey) -> Path:
    """Where the artifact a materialization recorded lives under the artifact root `root`: its `relative_path`
    (or, for materializations recorded before that existed, `<asset key>/<file name>` of its absolute `path`), so a
    moved home or an artifact root mounted at another path still finds it. The recorded absolute path is used only
    when nothing is found under `root`."""
    if "path" not in metadata:
        raise FileNotFoundError(f"the latest materialization of {key.to_user_string()} recorded no artifact path")
    recorded = Path(metadata["path"].value)
    relative = metadata["relative_path"].value if "relative_path" in metadata else None
    under_root = Path(root) / relative if relative else Path(root).joinpath(*key.path, recorded.name)
    return recorded if not under_root.exists() and recorded.exists() else under_root


def load_latest(instance: dg.DagsterInstance, key: dg.AssetKey, root: str | Path):
    """The value of `key`'s latest materialization, read from under `root` and checked against its digest."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise FileNotFoundError(f"{key.to_user_string()} has not been materialized")
    metadata = event.asset_materialization.metadata
    path = recorded_artifact(metadata, root, key)
    try:
        return read_artifact(path, metadata["sha256"].value if "sha256" in metadata else None)
    except ArtifactIntegrityError as error:
        raise ArtifactIntegrityError(f"{key.to_user_string()}: {error}") from error


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Stores tables as Parquet, tensors as safetensors and checkpoints as directories under
    `<root>/<asset key>/<sha256[:16]>`, and loads the version recorded by the upstream materialization, checking
    its digest. Materializations record the artifact relative to the root (`relative_path`; `path` is the
    absolute path on the machine that wrote it, for people), so the root may move."""

    root: str  # local path or any path the machine running the step can reach (shared storage on a cluster)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        path, digest = write_artifact(obj, Path(self.root).joinpath(*context.asset_key.path), warn=context.log.warning)
        metadata: dict = {
            "path": dg.MetadataValue.path(str(path)),
            "relative_path": path.relative_to(self.root).as_posix(),
            "sha256": digest,
        }
        if isinstance(obj, pl.DataFrame):
            metadata["dagster/row_count"] = obj.height
            metadata["dagster/column_schema"] = column_schema(obj)  # with each column's meaning
        elif isinstance(obj, TensorBundle):
            metadata["tensors"] = dg.MetadataValue.json(
                {k: [str(v.dtype), list(v.shape)] for k, v in obj.tensors.items()}
            )
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext):
        return load_latest(context.instance, context.asset_key, self.root)


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
