"""Content fingerprints of a dataset on disk or behind an fsspec URL, used as its observed data version.

A file's fingerprint is the sha256 of its bytes; a directory's (an HF `save_to_disk` folder, a folder of shards)
is the sha256 over its sorted relative paths and each file's bytes, so renaming, adding, removing or editing any
file changes it and touching a timestamp does not.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import fsspec

from ..storage.hashing import files_digest, sha256_stream


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    files: int
    bytes: int


def _file_sha256(fs, path: str) -> tuple[str, int]:
    with fs.open(path, "rb") as f:
        return sha256_stream(f)


def fingerprint(path: str) -> Fingerprint:
    """Fingerprint a local path or fsspec URL (file or directory); raises FileNotFoundError if it is missing."""
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise FileNotFoundError(f"dataset {path} does not exist")
    if not fs.isdir(root):
        sha, size = _file_sha256(fs, root)
        return Fingerprint(sha, 1, size)
    files, total, entries = sorted(fs.find(root)), 0, []
    for file in files:
        sha, size = _file_sha256(fs, file)
        total += size
        entries.append((posixpath.relpath(file, root.rstrip("/")), sha))
    return Fingerprint(files_digest(entries), len(files), total)
