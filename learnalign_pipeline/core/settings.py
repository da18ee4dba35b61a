"""How settings objects are written: frozen dataclasses whose fields carry their help text (TRL's `GRPOConfig`
style), so a default and its explanation live in one place and the Dagster configs are generated from them
(`lib/config.py`)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any


def setting(default: Any, help: str) -> Any:  # noqa: A002 - the name TRL's field metadata uses
    """A dataclass field with a default and its help text; mutable defaults are copied per instance."""
    if isinstance(default, (dict, list, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def require(condition: bool, field: str, message: str) -> None:
    """Refuse a setting, naming the field and saying why."""
    if not condition:
        raise ValueError(f"{field}: {message}")
