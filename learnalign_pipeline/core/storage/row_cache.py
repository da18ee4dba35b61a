"""Row-level reuse of rollouts and gradient features across runs, crashes and dataset edits.

Every cached result is keyed by what determines it: a *namespace* (the policy version and the stage's settings,
hashed) and *row keys* (a problem's content hash; for gradient features also the hash of that problem's
rollouts). A rerun, whether after a crash or after problems were added to the pool, computes only rows whose keys
are missing and reads the rest back.

Two granularities, because their float math differs:

* Rollouts are per problem: a problem's samples depend only on (policy, prompt, seed, sampling settings), never on
  its batch (`generation` promises and tests this), so any batch of missing problems can be generated and its rows
  reused one by one later.
* Gradient features are per *batch*: one batched forward/backward gives a problem's features up to float rounding
  that depends on its batch-mates (padding lengths, matrix shapes). To make reuse exact, a batch's membership is a
  function of problem content alone (`content_batches`): the same problems always form the same batches, whatever
  else is in the pool and however the batches are spread over shards or processes, so a cached batch holds exactly
  the numbers a fresh run computes.

Batch files are Parquet (rollouts) and safetensors (features), written under a temporary name and published by an
atomic rename (`artifacts.atomic_write_bytes`): a reader, or a run killed mid-write, never sees a partial file.

Every file is verified like an artifact: its name holds the sha256 of its bytes (`rows-<digest>.parquet`,
`batch-<batch key>-<digest>.safetensors`) and every read checks it. A file that was modified or truncated after
it was published is moved aside (`*.corrupt`, kept for inspection, never read), reported by name through `warn`
and counted in `dropped`, and its rows count as missing, so the stage computes them again.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .artifacts import TensorBundle, atomic_write_bytes, bundle_bytes, frame_bytes, read_artifact
from .hashing import settings_hash, sha256_bytes, stable_hash

DIGEST_CHARS = 32  # hex digits of a file's sha256 in its name


def problem_keys(problems: pl.DataFrame) -> list[str]:
    """Each problem's content key: the full sha256 of its id, prompt and gold answer (the id is itself a short
    content hash; the prompt and answer are what generation and the verifier read). A problem whose rewards are
    coin flips (`extra` noise_kind "coin_flip", data/noise.py) keeps its id and gold, so its key also names the
    noise: cached rows with coin-flip rewards are never read back for the clean problem, or the reverse."""
    columns = [problems[c].to_list() for c in ("problem_id", "prompt", "answer")]
    extras = problems["extra"].to_list() if "extra" in problems.columns else [None] * problems.height
    return [
        stable_hash(i, p, a, "coin_flip") if _coin_flip(e) else stable_hash(i, p, a)
        for i, p, a, e in zip(*columns, extras, strict=True)
    ]


def _coin_flip(extra: str | None) -> bool:
    return bool(extra) and "coin_flip" in extra and json.loads(extra).get("noise_kind") == "coin_flip"


def shard_of(key: str, num_shards: int) -> int:
    """The shard a row (or batch) belongs to: its key's hash modulo the shard count, so it never moves when
    other problems are added or removed."""
    return int(key[:15], 16) % num_shards


def content_batches(keys: Sequence[str], expected_size: int, max_size: int | None = None) -> list[list[int]]:
    """Group rows into batches whose membership depends only on the rows' keys (content-defined chunking).

    Rows are ordered by key; a row whose key satisfies `key mod expected_size == 0` (an independent part of the
    hash) opens a new batch, so batch sizes are geometric with mean `expected_size`. Adding or removing a problem
    therefore changes only the batch it falls into; every other batch keeps exactly its members. A batch also
    closes at `max_size` rows (bounding memory); an edit inside such a rare long run (probability
    (1 - 1/expected_size)^max_size per batch) also shifts the later pieces of that run. Returns lists of indices
    into `keys`, batches in key order.
    """
    if expected_size < 1:
        raise ValueError("expected_size must be >= 1")
    max_size = max_size or 8 * expected_size
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    batches: list[list[int]] = []
    for i in order:
        opens = int(keys[i][-8:], 16) % expected_size == 0
        if not batches or opens or len(batches[-1]) >= max_size:
            batches.append([])
        batches[-1].append(i)
    return batches


@dataclass(frozen=True)
class Namespace:
    """One stage's results for one policy version and one set of settings: a directory of batch files."""

    path: Path
    key: str


class RowCache:
    """Content-keyed, content-verified batch files under `root/<stage>/<namespace>/`."""

    def __init__(self, root: str | Path, warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.warn = warn or (lambda message: None)
        self.dropped: list[str] = []  # files this object found corrupted and moved aside

    def namespace(self, stage: str, settings: dict) -> Namespace:
        key = settings_hash({"stage": stage, **settings})
        path = self.root / stage / key[:24]
        description = path / "settings.json"
        if not description.exists():  # for people browsing the cache; never read back
            atomic_write_bytes(
                description, json.dumps({"stage": stage, **settings}, sort_keys=True, indent=1, default=str).encode()
            )
        return Namespace(path, key)

    # Verification, shared by both kinds of file.

    def _verified_bytes(self, path: Path) -> bytes | None:
        """The file's bytes if they match the digest in its name; otherwise it is moved aside and None returned."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # moved aside meanwhile by another shard that found it corrupted
            return None
        if sha256_bytes(data)[:DIGEST_CHARS] == path.stem.rsplit("-", 1)[-1]:
            return data
        self._drop(path, "does not match the digest in its name (modified or truncated after it was written)")
        return None

    def _drop(self, path: Path, reason: str) -> None:
        try:
            path.rename(path.with_name(path.name + ".corrupt"))
        except FileNotFoundError:
            pass
        self.dropped.append(path.name)
        self.warn(f"row cache file {path} {reason}: moved it aside (.corrupt); its rows are computed again")

    def _publish(self, directory: Path, prefix: str, data: bytes, suffix: str) -> Path:
        path = directory / f"{prefix}{sha256_bytes(data)[:DIGEST_CHARS]}{suffix}"
        if not path.exists() or self._verified_bytes(path) is None:
            atomic_write_bytes(path, data)
        return path

    # Rollouts: per-row reuse from Parquet batch files.

    def put_rows(self, ns: Namespace, rows: pl.DataFrame) -> Path:
        """Publish a batch of rows (with a `row_key` column), named by the digest of its bytes."""
        return self._publish(ns.path, "rows-", frame_bytes(rows), ".parquet")

    def row_files(self, ns: Namespace) -> list[Path]:
        return sorted(ns.path.glob("rows-*.parquet")) if ns.path.is_dir() else []

    def rows(self, ns: Namespace, row_keys: Sequence[str]) -> pl.DataFrame | None:
        """Every cached row whose key is in `row_keys` (first file in name order wins), or None if none are. Files
        that fail verification are dropped (see the module docstring)."""
        wanted = pl.Series("row_key", list(set(row_keys)), dtype=pl.String)
        frames = []
        for path in self.row_files(ns):
            data = self._verified_bytes(path)
            if data is None:
                continue
            try:
                frame = pl.read_parquet(io.BytesIO(data))
            except Exception as error:  # noqa: BLE001 - a file that verifies but does not parse: also dropped
                self._drop(path, f"is not a readable Parquet file ({type(error).__name__})")
                continue
            frames.append(frame.filter(pl.col("row_key").is_in(wanted)))
        frames = [f for f in frames if f.height]
        if not frames:
            return None
        return pl.concat(frames).unique(subset=["row_key", "sample_index"], keep="first", maintain_order=True)

    # Gradient features: per-batch reuse from safetensors files.

    def _batch_files(self, ns: Namespace, batch_key: str) -> list[Path]:
        return sorted(ns.path.glob(f"batch-{batch_key[:DIGEST_CHARS]}-*.safetensors")) if ns.path.is_dir() else []

    def get_batch(self, ns: Namespace, batch_key: str) -> TensorBundle | None:
        """The cached batch, or None when it is missing or every copy failed verification."""
        for path in self._batch_files(ns, batch_key):
            data = self._verified_bytes(path)
            if data is None:
                continue
            try:
                return read_artifact(path)
            except Exception as error:  # noqa: BLE001
                self._drop(path, f"is not a readable safetensors file ({type(error).__name__})")
        return None

    def has_batch(self, ns: Namespace, batch_key: str) -> bool:
        return self.get_batch(ns, batch_key) is not None

    def put_batch(self, ns: Namespace, batch_key: str, bundle: TensorBundle) -> Path:
        return self._publish(ns.path, f"batch-{batch_key[:DIGEST_CHARS]}-", bundle_bytes(bundle), ".safetensors")

    def batch_files(self, ns: Namespace) -> list[Path]:
        return sorted(ns.path.glob("batch-*.safetensors")) if ns.path.is_dir() else []
