"""Dagster configs and resources as thin views of core's settings objects.

`config_view(GRPOConfig, ...)` builds a `dg.Config` (or `dg.ConfigurableResource`) whose fields, types, defaults and
descriptions are read from the dataclass, so a default is written once, in core, and the launchpad shows the same
help text as the code. A view may pick fields (`include`/`exclude`) and override defaults for one stage
(`defaults`, e.g. warm-up's shorter schedule); `settings(view, cls)` turns a view back into the core object, whose
`__post_init__` validates it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

import dagster as dg
import pydantic
from pydantic import Field


def _field(source: dataclasses.Field, default: Any) -> Any:
    help_text = source.metadata.get("help")
    if default is not dataclasses.MISSING:
        return Field(default=default, description=help_text)
    if source.default_factory is not dataclasses.MISSING:
        return Field(default_factory=source.default_factory, description=help_text)
    return Field(default=source.default, description=help_text)


def config_view(
    *sources: type,
    base: type = dg.Config,
    name: str | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
) -> type:
    """A pydantic model (subclass of `base`) with the fields of the dataclasses `sources`, in their order; the first
    source that defines a name wins. Subclass the result to add methods, a docstring or stage-only fields."""
    include = set(include) if include is not None else None
    exclude, defaults = set(exclude), dict(defaults or {})
    fields: dict[str, tuple[Any, Any]] = {}
    for source in sources:
        hints = typing.get_type_hints(source)
        for f in dataclasses.fields(source):
            if f.name in fields or f.name in exclude or (include is not None and f.name not in include):
                continue
            fields[f.name] = (hints[f.name], _field(f, defaults.pop(f.name, dataclasses.MISSING)))
    if defaults:
        raise ValueError(f"defaults for fields the view does not have: {sorted(defaults)}")
    return pydantic.create_model(name or f"{sources[0].__name__}View", __base__=base, **fields)


def settings(view: pydantic.BaseModel, cls: type, **extra: Any) -> Any:
    """The core settings object `cls` from a view's values (fields `cls` does not have are left out) plus `extra`."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in view.model_dump().items() if k in names}
    return cls(**values, **extra)
