"""Artifact files: Parquet tables, safetensors tensors and `save_pretrained` checkpoint directories.

Every artifact is content-addressed (its path holds the sha256 of its bytes), written to a temporary name and
published with an atomic rename, so a reader sees a whole artifact or none, and a finished artifact is never
overwritten. Loading verifies the recorded digest, so a tampered or truncated file is refused. Nothing is
pickled: Parquet, safetensors and JSON only.

A checkpoint directory is hashed once, when it is published: `manifest.json` lists every file with its sha256 and
size, and the checkpoint's digest is computed from those entries. Loading a checkpoint checks the manifest against
the recorded digest, every file's presence and size, and re-hashes every byte, which also catches a same-size
edit of the weights. That costs one read of the files per process and checkpoint (22 loads per pipeline run, a
few GB each at 1.5B): a process remembers a verified checkpoint by each file's (inode, size, mtime, ctime) and hashes it
again only when one of them changed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import safetensors.torch
import torch
from safetensors.torch import load as load_safetensors  # safetensors' own parser: no pickle

from .hashing import MANIFEST, files_digest, sha256_bytes, sha256_file, tree_digest, tree_files


class ArtifactIntegrityError(RuntimeError):
    """An artifact's bytes do not match the digest recorded when it was written."""


@dataclass(frozen=True)
class TensorBundle:
    """Named tensors plus string metadata, stored as one safetensors file."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """A `save_pretrained` directory (model + tokenizer)."""

    path: Path


def frame_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=True)
    return buffer.getvalue()


# safetensors writes `__metadata__` from a hash map, so several keys come out in varying order; one entry
# holding canonical JSON keeps the file bytes (and so the content digest) deterministic.
METADATA_KEY = "learnalign"


def bundle_bytes(bundle: TensorBundle) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in bundle.tensors.items()}
    return safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(bundle.metadata, sort_keys=True)})


def encode(value) -> tuple[bytes, str]:
    """(bytes, file suffix) of a table or tensor bundle."""
    if isinstance(value, pl.DataFrame):
        return frame_bytes(value), ".parquet"
    if isinstance(value, TensorBundle):
        return bundle_bytes(value), ".safetensors"
    raise TypeError(f"cannot store {type(value).__name__}: use a polars DataFrame, TensorBundle or Checkpoint")


def content_digest(value) -> str:
    """The sha256 an artifact of `value` is stored under; also its Dagster data version."""
    if isinstance(value, Checkpoint):
        return checkpoint_manifest(value.path)["digest"]
    return sha256_bytes(encode(value)[0])


def _manifest_digest(files: list[dict]) -> str:
    return files_digest((f["path"], f["sha256"]) for f in files)


def checkpoint_manifest(root: Path) -> dict:
    """The checkpoint's manifest, hashing every file and writing `manifest.json` the first time (the digest equals
    `tree_digest(root)`). Call it on a finished staging directory: later calls read the file."""
    path = Path(root) / MANIFEST
    if path.exists():
        return json.loads(path.read_text())
    files = [
        {"path": f.relative_to(root).as_posix(), "sha256": sha256_file(f), "size": f.stat().st_size}
        for f in tree_files(root)
    ]
    manifest = {"digest": _manifest_digest(files), "files": files}
    atomic_write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def verify_checkpoint(root: Path, expected_sha256: str, full: bool = False) -> None:
    """Refuse a checkpoint whose manifest does not give `expected_sha256`, whose files differ from the manifest's
    list or sizes, or (with `full`, re-hashing every byte) whose contents changed. Checkpoints published before
    manifests existed are always checked in full."""
    root = Path(root)
    if not (root / MANIFEST).exists():
        if tree_digest(root) != expected_sha256:
            raise ArtifactIntegrityError(f"checkpoint {root} does not match its recorded digest {expected_sha256[:16]}")
        return
    manifest = json.loads((root / MANIFEST).read_text())
    files = manifest["files"]
    if _manifest_digest(files) != expected_sha256 or manifest["digest"] != expected_sha256:
        raise ArtifactIntegrityError(
            f"checkpoint {root}: manifest does not match the recorded digest {expected_sha256[:16]}"
        )
    on_disk = {f.relative_to(root).as_posix(): f for f in tree_files(root)}
    if set(on_disk) != {f["path"] for f in files}:
        extra, missing = set(on_disk) - {f["path"] for f in files}, {f["path"] for f in files} - set(on_disk)
        raise ArtifactIntegrityError(
            f"checkpoint {root}: files differ from its manifest (extra {sorted(extra)}, missing {sorted(missing)})"
        )
    for entry in files:
        path = on_disk[entry["path"]]
        if path.stat().st_size != entry["size"] or (full and sha256_file(path) != entry["sha256"]):
            raise ArtifactIntegrityError(f"checkpoint file {path} does not match its manifest")


# (checkpoint root, digest) -> each file's (inode, size, mtime, ctime) when its bytes last matched the manifest;
# ctime cannot be set back by hand, so an edit after the check is seen
_VERIFIED: dict[tuple[str, str], tuple] = {}


def _file_states(root: Path) -> tuple:
    files = [*tree_files(root), *([root / MANIFEST] if (root / MANIFEST).exists() else [])]
    return tuple(
        (f.relative_to(root).as_posix(), s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
        for f in files
        for s in [f.stat()]
    )


def verify_checkpoint_bytes(root: Path, expected_sha256: str) -> None:
    """`verify_checkpoint(root, expected_sha256, full=True)`, at most once per process while no file changed."""
    root = Path(root).resolve()
    key, states = (str(root), expected_sha256), _file_states(root)
    if _VERIFIED.get(key) == states:
        return
    verify_checkpoint(root, expected_sha256, full=True)
    _VERIFIED[key] = states


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that no reader ever sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish_directory(staging: Path, final: Path, digest: str | None = None, warn=None) -> Path:
    """Move a finished staging directory to its content-addressed home with one rename.

    If `final` already exists and holds the same content (`digest`, when given, is checked), the staging copy is
    discarded. A copy that no longer matches (files edited or deleted after publishing) is replaced by the staging
    copy and removed, and `warn` is told.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for path in Path(staging).rglob("*"):  # contents on disk before the rename makes them visible
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    try:
        os.rename(staging, final)
        return final
    except OSError:
        if not final.is_dir():
            raise
    if digest is None or tree_digest(final) == digest:
        shutil.rmtree(staging, ignore_errors=True)
        return final
    aside = final.with_name(f".{final.name}.corrupt-{uuid.uuid4().hex}")
    os.rename(final, aside)
    os.rename(staging, final)
    shutil.rmtree(aside, ignore_errors=True)
    if warn:
        warn(f"checkpoint {final} did not match its digest (changed after it was published): replaced it")
    return final


def write_artifact(value, directory: Path, warn=None) -> tuple[Path, str]:
    """Store `value` under `directory` named by its digest; returns (path, sha256). An existing file or directory
    at that path is verified, and rewritten (telling `warn`) when it no longer matches: rematerializing repairs
    a corrupted artifact."""
    if isinstance(value, Checkpoint):
        digest = checkpoint_manifest(value.path)["digest"]
        return publish_directory(Path(value.path), directory / digest[:16], digest, warn), digest
    data, suffix = encode(value)
    digest = sha256_bytes(data)
    path = directory / f"{digest[:16]}{suffix}"
    if not path.exists():
        atomic_write_bytes(path, data)
    elif sha256_file(path) != digest:
        atomic_write_bytes(path, data)
        if warn:
            warn(f"artifact {path} did not match its digest (changed after it was written): rewrote it")
    return path, digest


def read_artifact(path: Path, expected_sha256: str | None = None):
    """Load a stored artifact by its suffix, refusing it if its digest differs from `expected_sha256`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist")
    if path.is_dir():
        if expected_sha256:
            try:
                verify_checkpoint_bytes(path, expected_sha256)
            except ArtifactIntegrityError as error:
                raise ArtifactIntegrityError(
                    f"{error}: it changed after it was published. Rematerialize the asset that wrote it: the new "
                    "write replaces the changed copy"
                ) from None
        return Checkpoint(path)
    data = path.read_bytes()
    if expected_sha256 and sha256_bytes(data) != expected_sha256:
        raise ArtifactIntegrityError(
            f"artifact {path} does not match its recorded digest {expected_sha256[:16]}: it changed after it was "
            "written. Rematerialize the asset that wrote it: the new write replaces the changed copy"
        )
    if path.suffix == ".parquet":
        return pl.read_parquet(io.BytesIO(data))
    if path.suffix == ".safetensors":
        tensors = load_safetensors(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        return TensorBundle(tensors=tensors, metadata=json.loads(metadata.get(METADATA_KEY, "{}")))
    raise ValueError(f"unknown artifact type {path.suffix!r} at {path}")
