"""A home (or an artifact root) moved after its artifacts were written still reads them (issue 25: metadata held
absolute paths, so `learnalign report` on a moved or renamed LEARNALIGN_HOME crashed with FileNotFoundError).
Materializations record the artifact relative to the root; older ones, with only the absolute path, are read
under the new root by their asset key and file name."""

import dagster as dg
import polars as pl

from learnalign_pipeline import cli
from learnalign_pipeline.core.storage.artifacts import write_artifact
from learnalign_pipeline.defs.evaluation.assets import TABLE_COLUMNS
from learnalign_pipeline.lib.io_managers import ArtifactIOManager

FRAME = pl.DataFrame({"problem_id": ["a", "b"], "value": [1.0, 2.0]})


@dg.asset
def written() -> pl.DataFrame:
    return FRAME


@dg.asset
def reader(written: pl.DataFrame) -> pl.DataFrame:
    return written.with_columns(pl.col("value") * 2)


def test_an_artifact_root_moved_after_writing_is_read_at_its_new_place(tmp_path):
    before, after = tmp_path / "root_before", tmp_path / "root_after"
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        assert dg.materialize(
            [written], instance=instance, resources={"io_manager": ArtifactIOManager(root=str(before))}
        ).success
        recorded = instance.get_latest_materialization_event(written.key).asset_materialization.metadata
        assert recorded["relative_path"].value.startswith("written/")
        old_style = before / "old_style" / "x.parquet"  # recorded before relative paths existed: absolute path only
        path, digest = write_artifact(FRAME, before / "old_style")
        instance.report_runless_asset_event(
            dg.AssetMaterialization("old_style", metadata={"path": dg.MetadataValue.path(str(path)), "sha256": digest})
        )
        before.rename(after)
        result = dg.materialize(
            [reader, written.to_source_asset()],
            instance=instance,
            resources={"io_manager": ArtifactIOManager(root=str(after))},
            selection=[reader],
        )
        assert result.success
        manager = ArtifactIOManager(root=str(after))
        from learnalign_pipeline.lib.io_managers import load_latest

        assert load_latest(instance, dg.AssetKey("old_style"), manager.root).equals(FRAME)
    assert not old_style.exists()


def test_learnalign_report_works_on_a_moved_home(tmp_path, monkeypatch, capsys):
    home, moved = tmp_path / "home", tmp_path / "renamed_home"
    monkeypatch.setenv("LEARNALIGN_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cli.prepare_environment()
    table = pl.DataFrame(
        {
            "policy": ["pretrained"], "benchmark": ["arithmetic"], "num_problems": [60], "num_correct": [1],
            "accuracy": [1 / 60], "low": [0.003], "high": [0.089], "decoding": ["greedy"], "template": ["qa"], "verifier": ["numeric"],
            "backend": ["transformers"],
        }
    )  # fmt: skip
    assert set(TABLE_COLUMNS) < set(table.columns)
    path, digest = write_artifact(table, home / "artifacts" / "benchmark_results")
    with dg.DagsterInstance.get() as instance:  # as a benchmark_results materialization recorded it, before issue 25
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                "benchmark_results",
                metadata={
                    "path": dg.MetadataValue.path(str(path)),
                    "sha256": digest,
                    "trained_minus_warmup_points": 1.5,
                },
            )
        )
    home.rename(moved)
    monkeypatch.setenv("LEARNALIGN_HOME", str(moved))
    monkeypatch.setenv("DAGSTER_HOME", str(moved / "dagster_home"))
    assert cli.main(["report"]) == 0
    out = capsys.readouterr().out
    assert "| pretrained | arithmetic | 60 | 1 |" in out and "trained - warmup: +1.5 points" in out
