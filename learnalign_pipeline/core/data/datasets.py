"""Which files feed the pool and the benchmark, and how their columns map onto the problem table: one JSON file,
`LEARNALIGN_HOME/datasets.json`, written by `learnalign dataset` and read at every observation and every load, so
a new path or mapping reaches the daily loop without restarting anything.

    {"pool": {"path": "/data/math/train.jsonl", "format": "math", ...}, "benchmark": {...}}

An entry holds a `SourceConfig` without its split. A split with no entry falls back to the environment
(`LEARNALIGN_POOL_PATH` / `LEARNALIGN_BENCHMARK_PATH`, read by the resource), then to the embedded generator.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..storage.artifacts import atomic_write_bytes
from ..storage.hashing import settings_hash
from .loaders import SourceConfig

# Setting name -> split of the problem table.
SPLITS = {"pool": "pool", "benchmark": "test"}
_FIELDS = {f.name for f in dataclasses.fields(SourceConfig)} - {"split"}


def read_datasets(path: Path) -> dict[str, SourceConfig]:
    """The configured sources by split ("pool", "test"); {} when the file does not exist."""
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        unknown = set(raw) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown entries {sorted(unknown)}; expected {sorted(SPLITS)}")
        return {SPLITS[name]: SourceConfig(**entry, split=SPLITS[name]) for name, entry in raw.items()}
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{path} is not a valid dataset settings file ({error}); fix it or rerun `learnalign dataset`"
        ) from None


def write_dataset(path: Path, name: str, source: SourceConfig | None) -> None:
    """Set (or with None, remove) one entry, atomically, so a reader never sees half a file."""
    if name not in SPLITS:
        raise ValueError(f"dataset {name!r}: expected one of {sorted(SPLITS)}")
    raw = json.loads(path.read_text()) if path.exists() else {}
    if source is None:
        raw.pop(name, None)
    else:
        raw[name] = {k: v for k, v in dataclasses.asdict(source).items() if k in _FIELDS}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(raw, indent=2, sort_keys=True) + "\n").encode())


def mapping(source: SourceConfig) -> dict:
    """What of a source decides the rows it loads, besides the file's bytes."""
    return {k: v for k, v in dataclasses.asdict(source).items() if k in _FIELDS}


def observed_version(source: SourceConfig, content_sha256: str) -> str:
    """A configured source's observed data version: its mapping and its content, so a new path, format or column
    mapping re-runs the loop as an edit of the file does."""
    return settings_hash({"source": mapping(source), "content": content_sha256})
