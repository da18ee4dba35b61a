"""A corrupted artifact on the instance `learnalign` configures: its consumer fails naming the asset and what to
do, and rematerializing the asset repairs the file or the checkpoint directory (it used to see that the
content-addressed path existed, skip the write and record the same digest, so the consumer failed again)."""

from pathlib import Path

import dagster as dg
import pytest

from learnalign_pipeline import cli
from learnalign_pipeline.core.storage.artifacts import read_artifact
from learnalign_pipeline.presets import SMOKE

pytestmark = pytest.mark.slow


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cli.prepare_environment()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return tmp_path


def _run(assets: list[str]) -> bool:
    ops = {k: v for k, v in SMOKE["ops"].items() if k in ("benchmark_problems", "raw_problems", "pretrained_policy")}
    return cli.run_job("learnalign_job", {"ops": ops, "resources": SMOKE["resources"]}, assets=assets)


def _latest(asset: str) -> tuple[Path, str]:
    with dg.DagsterInstance.get() as instance:
        meta = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata
    return Path(meta["path"].value), meta["sha256"].value


def test_rematerializing_repairs_a_corrupted_table_and_its_consumer_then_succeeds(home, capsys):
    assert _run(["benchmark_problems", "benchmark_rejected_problems"])
    path, digest = _latest("benchmark_problems")
    path.write_bytes(path.read_bytes()[:-16])  # truncated on disk

    assert not _run(["raw_problems", "rejected_problems"])  # the consumer refuses the corrupted input ...
    out = capsys.readouterr().out
    assert f"benchmark_problems: artifact {path} does not match its recorded digest" in out
    assert "Rematerialize the asset that wrote it" in out  # ... and says what to do

    assert _run(["benchmark_problems", "benchmark_rejected_problems"])
    assert _latest("benchmark_problems") == (path, digest) and read_artifact(path, digest).height > 0
    assert _run(["raw_problems", "rejected_problems"])


def test_rematerializing_repairs_a_corrupted_checkpoint_directory(home):
    assert _run(["benchmark_problems", "benchmark_rejected_problems", "pretrained_policy"])
    path, digest = _latest("pretrained_policy")
    (path / "config.json").write_text("{}")  # an edited checkpoint
    assert _run(["pretrained_policy"])
    assert _latest("pretrained_policy") == (path, digest)
    assert read_artifact(path, digest).path == path  # verifies again: the directory was replaced
