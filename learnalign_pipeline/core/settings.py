"""How settings objects are written: frozen dataclasses whose fields carry their help text (TRL's `GRPOConfig`
style), so a default and its explanation live in one place and the Dagster configs are generated from them
(`lib/config.py`)."""

from __future__ import annotations

import copy
import dataclasses
import math
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


def require_finite(settings: Any) -> None:
    """Refuse NaN and +-inf in every number of a settings object (dict values included), naming the field: no bound
    written as `x > 0` or `x <= 1` refuses inf, and `lr = inf` would fail at step 1 blaming the data."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        for number in value.values() if isinstance(value, dict) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"{f.name}: must be a finite number (got {number})")
