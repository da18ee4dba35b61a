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


def _checkpoint(root, files):
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return Checkpoint(root)


def test_checkpoints_are_hashed_once_at_publish(tmp_path, monkeypatch):
    """Publishing hashes each file once into manifest.json; the first load in a process hashes every file again
    (a same-size edit is caught), later loads of the unchanged files check the manifest and their stat only."""
    from learnalign_pipeline.core.storage import artifacts, hashing

    files = {"config.json": b"{}", "model.safetensors": b"x" * 4096}
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p: calls.append(p) or real(p))
    checkpoint = _checkpoint(tmp_path / "staging", files)
    digest = content_digest(checkpoint)  # the data version, computed where the asset returns it
    path, written = write_artifact(checkpoint, tmp_path / "store")
    for _ in range(5):
        read_artifact(path, digest)
    assert written == digest == hashing.tree_digest(path)  # same digest formula as before manifests existed
    assert len(calls) == 2 * len(files)  # once at publish, once at the first load: at most one read per process


def test_checkpoint_load_refuses_changed_files(tmp_path):
    from learnalign_pipeline.core.storage.artifacts import verify_checkpoint

    path, digest = write_artifact(
        _checkpoint(tmp_path / "staging", {"a.json": b"{}", "w.bin2": b"abcd"}), tmp_path / "s"
    )
    (path / "w.bin2").write_bytes(b"abcdef")  # truncated or grown: caught by the cheap check
    with pytest.raises(ArtifactIntegrityError, match="manifest"):
        read_artifact(path, digest)
    (path / "w.bin2").write_bytes(b"abce")  # same size, other bytes: the load re-hashes the files (was size-only)
    with pytest.raises(ArtifactIntegrityError, match="w.bin2 does not match its manifest"):
        read_artifact(path, digest)
    with pytest.raises(ArtifactIntegrityError):
        verify_checkpoint(path, digest, full=True)
    (path / "w.bin2").write_bytes(b"abcd")
    (path / "extra.txt").write_text("x")
    with pytest.raises(ArtifactIntegrityError, match="extra"):
        read_artifact(path, digest)
    (path / "extra.txt").unlink()
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactIntegrityError, match="recorded digest"):
        read_artifact(path, digest)


def test_writing_a_value_again_repairs_a_corrupted_file(tmp_path):
    frame = pl.DataFrame({"id": ["a", "b"], "v": [0.5, 1.5]})
    path, digest = write_artifact(frame, tmp_path)
    path.write_bytes(path.read_bytes()[:-10])  # truncated after it was written
    with pytest.raises(ArtifactIntegrityError, match="Rematerialize the asset that wrote it"):
        read_artifact(path, digest)
    said = []
    assert write_artifact(frame, tmp_path, warn=said.append) == (path, digest)
    assert read_artifact(path, digest).equals(frame)
    assert said == [f"artifact {path} did not match its digest (changed after it was written): rewrote it"]
    write_artifact(frame, tmp_path, warn=said.append)  # an intact copy is left as it is
    assert len(said) == 1


@pytest.mark.parametrize("damage", ["edited", "deleted"])
def test_publishing_a_checkpoint_again_repairs_a_corrupted_directory(tmp_path, damage):
    def staged(name):
        staging = tmp_path / name
        (staging / "sub").mkdir(parents=True)
        (staging / "config.json").write_text("{}")
        (staging / "sub" / "weights.bin").write_bytes(b"\x00\x01")
        return Checkpoint(staging)

    path, digest = write_artifact(staged("first"), tmp_path / "store")
    if damage == "edited":
        (path / "config.json").write_text('{"tampered": true}')
    else:
        (path / "sub" / "weights.bin").unlink()
    with pytest.raises(ArtifactIntegrityError):
        read_artifact(path, digest)
    said = []
    assert write_artifact(staged("second"), tmp_path / "store", warn=said.append) == (path, digest)
    assert read_artifact(path, digest).path == path and len(said) == 1
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [path.name]  # the bad copy is gone
    assert not (tmp_path / "second").exists()


def test_a_checkpoint_edited_after_a_verified_load_is_refused_at_the_next_load(tmp_path):
    """A same-size edit of the weights between two loads (issue 25: a zeroed embedding gave a 0.0% benchmark row)."""
    import time

    path, digest = write_artifact(_checkpoint(tmp_path / "staging", {"model.safetensors": b"w" * 64}), tmp_path / "s")
    assert read_artifact(path, digest).path == path
    time.sleep(0.05)  # past the file-system clock's tick: the edit gets a new mtime and ctime
    (path / "model.safetensors").write_bytes(b"v" * 64)
    with pytest.raises(ArtifactIntegrityError, match="Rematerialize the asset that wrote it"):
        read_artifact(path, digest)
