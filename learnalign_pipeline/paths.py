"""Where this code location keeps its state: one rule for the CLI and the resources."""

from __future__ import annotations

import os
from pathlib import Path


def project_home() -> Path:
    """`LEARNALIGN_HOME` (default ./.learnalign): artifacts, row cache, results database, Dagster instance, logs."""
    return Path(os.environ.get("LEARNALIGN_HOME", Path.cwd() / ".learnalign")).resolve()


def models_folder() -> Path:
    """`LEARNALIGN_MODELS` (default ~/.cache/learnalign/models): model files fetched from the registry
    (scripts/fetch_smollm2.py), shared by every project home and kept between CI runs."""
    return Path(os.environ.get("LEARNALIGN_MODELS") or Path.home() / ".cache" / "learnalign" / "models")
