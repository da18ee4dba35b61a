"""Every content hash and hash-derived seed in the project, in one place, so the byte formulas that ids, artifact
paths, cache keys and seeds depend on are written once.

All are sha256. Changing any formula here changes problem ids, artifact digests or sampled numbers: it is a
data-format change, not a refactor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in the parts by accident


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """(sha256 hex, byte count) of a binary stream, read in 1 MiB blocks."""
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)[0]


def files_digest(entries: Iterable[tuple[str, str]]) -> str:
    """sha256 over (relative path, file sha256) pairs, in the order given (callers sort them)."""
    digest = hashlib.sha256()
    for relative, file_sha in entries:
        digest.update(f"{relative}\0{file_sha}\n".encode())
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """The files_digest of every file under `root`, in sorted path order."""
    files = sorted(p for p in Path(root).rglob("*") if p.is_file())
    return files_digest((path.relative_to(root).as_posix(), sha256_file(path)) for path in files)


def stable_hash(*parts: str) -> str:
    """sha256 hex of the parts joined by SEPARATOR."""
    return sha256_bytes(SEPARATOR.join(parts).encode())


def settings_hash(settings: dict) -> str:
    """sha256 of the canonical JSON of a settings dict (cache namespaces, resume keys)."""
    return stable_hash(json.dumps(settings, sort_keys=True, default=str))


def problem_id(prompt: str, answer: str) -> str:
    """A problem's id: the first 16 hex digits of the content hash of (prompt, gold answer)."""
    return stable_hash(prompt, answer)[:16]


def hash_int(seed: int, key: str, num_bytes: int) -> int:
    """An integer of `num_bytes` random bytes derived from (seed, key): seeds and draws that depend on content,
    never on row order or on the rest of the pool."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:num_bytes], "little")


def seeded_uniform(keys: list[str], seed: int, purpose: str = "") -> list[float]:
    """A uniform number in [0, 1) per key, from (seed, key). A `purpose` makes draws that share a seed independent
    (which problems are noisy vs. Random's draw); the empty purpose is the original formula."""
    prefix = f"{purpose}:" if purpose else ""
    return [hash_int(seed, prefix + key, 7) / 2**56 for key in keys]


def coin_flip(problem_id: str, sample_seed: int) -> float:
    """A fair coin (0.0 or 1.0) per rollout, keyed by its problem and its sampling seed: reproducible, independent
    of the completion, fresh for every rollout."""
    return float(hashlib.sha256(f"coin_flip:{problem_id}:{sample_seed}".encode()).digest()[0] & 1)


def derived_seed(seed: int, purpose: str) -> int:
    """A 31-bit seed for one purpose of a run seed (warm-up draw, training, evaluation, ...), so streams that share
    a run seed never share a hash."""
    return hash_int(seed, f"derived:{purpose}", 4) % 2**31
