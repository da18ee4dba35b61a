import json

import polars as pl
import pytest
import torch

from learnalign_pipeline.core.storage.artifacts import (
    ArtifactIntegrityError,
    Checkpoint,
    TensorBundle,
    content_digest,
    read_artifact,
    write_artifact,
)


def _bundle():
    return TensorBundle(
        tensors={"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.ones(4, dtype=torch.uint8)},
        metadata={"problem_ids": json.dumps(["x", "y"]), "seed": "0", "method": "kronecker"},
    )


def test_digests_are_deterministic():
    assert len({content_digest(_bundle()) for _ in range(20)}) == 1  # safetensors metadata order must not leak in
    frame = pl.DataFrame({"id": ["a", "b"], "ids": [[1, 2], [3]]})
    assert content_digest(frame) == content_digest(frame.clone())


@pytest.mark.parametrize("value", [pl.DataFrame({"id": ["a", "b"], "v": [0.5, 1.5]}), _bundle()])
def test_round_trip_and_tamper_detection(tmp_path, value):
    path, digest = write_artifact(value, tmp_path)
    assert path.name.startswith(digest[:16]) and digest == content_digest(value)
    loaded = read_artifact(path, digest)
    if isinstance(value, pl.DataFrame):
        assert loaded.equals(value)
    else:
        assert loaded.metadata == value.metadata and all(
            torch.equal(loaded.tensors[k], v) for k, v in value.tensors.items()
        )
    again, _ = write_artifact(value, tmp_path)  # identical content: same immutable file
    assert again == path and len(list(tmp_path.iterdir())) == 1
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError):
        read_artifact(path, digest)


def test_checkpoint_directories_are_published_by_rename(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    path, digest = write_artifact(Checkpoint(staging), tmp_path / "store")
    assert not staging.exists() and (path / "config.json").exists()
    assert read_artifact(path, digest).path == path
    (path / "config.json").write_text('{"tampered": true}')
    with pytest.raises(ArtifactIntegrityError):
        read_artifact(path, digest)


def test_missing_artifact_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        read_artifact(tmp_path / "nothing.parquet")
