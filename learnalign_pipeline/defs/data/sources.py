"""The raw dataset files as observable source assets: the start of the daily loop.

Each observation records the dataset's content fingerprint as its data version (`core.fingerprint`: the file's
bytes, or a directory's sorted relative paths and bytes). Declarative automation compares it with the version the
problem table was built from, so an edited file re-runs exactly what depends on it and an unchanged one runs
nothing. The observations run on a cron through the automation sensor (`defs/automation`).

Which files are watched is the `datasets` resource's business, not per-run config: runs the automation sensor
launches carry no run config. `learnalign dataset pool|benchmark PATH [--format ...]` writes the path and column
mapping to `LEARNALIGN_HOME/datasets.json`, read at every observation and load (no restart); a split it does not
name falls back to env `LEARNALIGN_POOL_PATH` / `LEARNALIGN_BENCHMARK_PATH`. With no file configured the splits come from the embedded arithmetic generator;
the observed version is then the sha256 of the generator's source code (`core/data/arithmetic.py`), the only thing
outside run config that can change its output.
"""

import inspect
import os

import dagster as dg

from ...core.data import arithmetic
from ...core.data.datasets import mapping, observed_version
from ...core.data.fingerprint import fingerprint
from ...core.storage.hashing import sha256_bytes
from ...lib.resources import DatasetFiles

# How often the dataset files are re-hashed (cheap next to everything they feed); override per deployment.
OBSERVE_CRON = os.environ.get("LEARNALIGN_OBSERVE_CRON", "*/15 * * * *")


def generator_version() -> str:
    """The embedded generator's observed version: the sha256 of its source code."""
    return sha256_bytes(inspect.getsource(arithmetic).encode())


def observe_split(datasets: DatasetFiles, split: str) -> dg.ObserveResult:
    path, configured = datasets.path_for(split), datasets.configured(split)
    if not path:
        return dg.ObserveResult(
            data_version=dg.DataVersion(generator_version()),
            metadata={
                "source": "embedded arithmetic generator",
                "fingerprint": "sha256 of core/data/arithmetic.py",
                "configured_by": datasets.origin(split),
            },
        )
    found = fingerprint(path)
    # A file named in the settings file is versioned with its column mapping, so a mapping change re-runs the loop.
    version = observed_version(configured, found.sha256) if configured else found.sha256
    metadata = {
        "source": dg.MetadataValue.path(path),
        "configured_by": datasets.origin(split),
        "files": found.files,
        "bytes": found.bytes,
        "sha256": found.sha256,
    }
    if configured:
        metadata["mapping"] = dg.MetadataValue.json({k: v for k, v in mapping(configured).items() if k != "path"})
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata=metadata)


def _observable_split(name: str, split: str, description: str):
    @dg.observable_source_asset(
        name=name,
        group_name="data",
        description=description,
        automation_condition=dg.AutomationCondition.on_cron(OBSERVE_CRON),
    )
    def observe(datasets: DatasetFiles) -> dg.ObserveResult:
        return observe_split(datasets, split)

    return observe


pool_dataset = _observable_split("pool_dataset", "pool", "The pool's raw file(s); data version = content fingerprint.")
benchmark_dataset = _observable_split(
    "benchmark_dataset", "test", "The benchmark's raw file(s); data version = content fingerprint."
)
