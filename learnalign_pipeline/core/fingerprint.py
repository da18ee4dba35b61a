"""Content fingerprints of a dataset on disk or behind an fsspec URL, used as its observed data version.

A file's fingerprint is the sha256 of its bytes; a directory's (an HF `save_to_disk` folder, a folder of shards)
is the sha256 over its sorted relative paths and each file's bytes, so renaming, adding, removing or editing any
file changes it and touching a timestamp does not.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

import fsspec


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    files: int
    bytes: int


def _file_sha256(fs, path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def fingerprint(path: str) -> Fingerprint:
    """Fingerprint a local path or fsspec URL (file or directory); raises FileNotFoundError if it is missing."""
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise FileNotFoundError(f"dataset {path} does not exist")
    if not fs.isdir(root):
        sha, size = _file_sha256(fs, root)
        return Fingerprint(sha, 1, size)
    digest, total, files = hashlib.sha256(), 0, sorted(fs.find(root))
    for file in files:
        sha, size = _file_sha256(fs, file)
        total += size
        digest.update(f"{posixpath.relpath(file, root.rstrip('/'))}\0{sha}\n".encode())
    return Fingerprint(digest.hexdigest(), len(files), total)
