"""The IO manager: every asset value becomes a content-addressed, verified artifact file (never a pickle)."""


from pathlib import Path

import dagster as dg
import polars as pl

from ..core.artifacts import TensorBundle, read_artifact, write_artifact


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Stores tables as Parquet, tensors as safetensors and checkpoints as directories under
    `<root>/<asset key>/<partition>/<sha256[:16]>`, and loads the version recorded by the upstream
    materialization, checking its digest."""

    root: str  # local path or any path the machine running the step can reach (shared storage on a cluster)

    def _directory(self, context: dg.OutputContext | dg.InputContext) -> Path:
        directory = Path(self.root).joinpath(*context.asset_key.path)
        return directory / context.partition_key if context.has_partition_key else directory

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        path, digest = write_artifact(obj, self._directory(context))
        metadata: dict = {"path": dg.MetadataValue.path(str(path)), "sha256": digest}
        if isinstance(obj, pl.DataFrame):
            metadata["dagster/row_count"] = obj.height
            metadata["dagster/column_schema"] = dg.TableSchema(
                columns=[dg.TableColumn(name, str(dtype)) for name, dtype in obj.schema.items()]
            )
        elif isinstance(obj, TensorBundle):
            metadata["tensors"] = dg.MetadataValue.json({k: [str(v.dtype), list(v.shape)] for k, v in obj.tensors.items()})
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext):
        key = context.asset_key
        if context.has_asset_partitions:
            return {pk: self._load(context, key, pk) for pk in context.asset_partition_keys}
        return self._load(context, key, None)

    def _load(self, context: dg.InputContext, key: dg.AssetKey, partition: str | None):
        event = context.instance.get_latest_materialization_event(key) if partition is None else _partition_event(
            context.instance, key, partition
        )
        if event is None or event.asset_materialization is None:
            raise FileNotFoundError(f"{key.to_user_string()} has not been materialized" + (f" for {partition}" if partition else ""))
        metadata = event.asset_materialization.metadata
        if "path" not in metadata:
            raise FileNotFoundError(f"the latest materialization of {key.to_user_string()} recorded no artifact path")
        return read_artifact(Path(metadata["path"].value), metadata["sha256"].value if "sha256" in metadata else None)


def _partition_event(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0].event_log_entry if records else None

