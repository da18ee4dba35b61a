"""Dagster configs and resources as thin views of core's settings objects.

`config_view(GRPOConfig, ...)` builds a `dg.Config` (or `dg.ConfigurableResource`) whose fields, types, defaults and
descriptions are read from the dataclass, so a default is written once, in core, and the launchpad shows the same
help text as the code. A view may pick fields (`include`/`exclude`) and override defaults for one stage
(`defaults`, e.g. warm-up's shorter schedule); `settings(view, cls)` turns a view back into the core object, whose
`__post_init__` validates it. A view validates its values the same way when it is built, so a bad value fails
with the field's name and the reason, never deep inside a stage.

Dagster checks only the types of run config values, and a `dg.Config` is built when its step starts, so a bad
value would surface after the steps before it ran (hours on a GPU). `check_run_config` builds every config and
resource of a run config against the job first; the CLI calls it before it creates a run.
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
    return pydantic.create_model(name or f"{sources[0].__name__}View", __base__=_validated(base, sources), **fields)


def _validated(base: type, sources: tuple[type, ...]) -> type:
    """`base` plus a validator that builds each source settings object from the view's values, so its
    `__post_init__` bounds apply to the view (fields the view leaves out keep the source's defaults)."""

    class Validated(base):
        @pydantic.model_validator(mode="after")
        def _within_bounds(self):
            values = self.model_dump()
            for source in sources:
                names = {f.name for f in dataclasses.fields(source)}
                source(**{k: v for k, v in values.items() if k in names})
            return self

    return Validated


def settings(view: pydantic.BaseModel, cls: type, **extra: Any) -> Any:
    """The core settings object `cls` from a view's values (fields `cls` does not have are left out) plus `extra`."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in view.model_dump().items() if k in names}
    return cls(**values, **extra)


def _device_refusals(resources: dict) -> list[str]:
    """The device settings this machine cannot run (core/compute.py `device_problems`), placed like the others."""
    from ..core.compute import ComputeConfig, device_problems
    from ..core.policy.vllm_backend import VLLMConfig
    from ..core.training.config import TrainerConfig
    from .sharded import NUM_SHARDS

    def built(key: str, cls: type):
        view = resources.get(key)
        return settings(view, cls) if isinstance(view, pydantic.BaseModel) else cls()

    trainer = built("trainer", TrainerConfig)
    refused = device_problems(
        built("compute", ComputeConfig),
        processes=trainer.processes,
        vllm_training=trainer.rollouts == "vllm",
        tensor_parallel_size=built("generator", VLLMConfig).tensor_parallel_size,
        shards=NUM_SHARDS,
    )
    return [f"environment: {p}" if p.owner == "environment" else f"resources.{p.owner}.config: {p}" for p in refused]


class SettingsError(ValueError):
    """Run config values the settings objects refuse; the message lists each with its place and reason."""


def _reasons(error: Exception) -> list[str]:
    if isinstance(error, pydantic.ValidationError):
        return [
            e["msg"].removeprefix("Value error, ")
            + ("" if e["type"] == "value_error" else f" ({'.'.join(map(str, e['loc']))})")
            for e in error.errors()
            if e["type"] != "missing"  # supplied by the definitions' binding, not by this run config
        ]
    cause = error.__cause__ or error.__context__
    if isinstance(cause, (ValueError, pydantic.ValidationError)):  # a graph asset's config mapping wraps it
        return _reasons(cause)
    return [str(error)]


def check_run_config(job: dg.JobDefinition, run_config: dict) -> None:
    """Build every op config and resource `run_config` sets for `job` the way its steps will; raise SettingsError
    naming each refused value (`ops.<asset>.config: <field>: <reason>`). Nothing runs."""
    problems = run_config_refusals(job, run_config)
    if problems:
        raise SettingsError("the run config has values the pipeline refuses:\n  " + "\n  ".join(problems))


def run_config_refusals(job: dg.JobDefinition, run_config: dict) -> list[str]:
    """Each value of `run_config` a settings object of `job` refuses, as `<place>: <field>: <reason>`."""
    problems = []
    for name, entry in (run_config.get("ops") or {}).items():
        values = (entry or {}).get("config") or {}
        node = job.graph.node_dict.get(name)
        if node is None:
            continue  # Dagster names unknown ops itself
        definition = node.definition
        try:
            if isinstance(definition, dg.GraphDefinition) and definition.config_mapping is not None:
                definition.config_mapping.config_fn(values)
            elif isinstance(definition, dg.OpDefinition) and definition.compute_fn.has_config_arg():
                cls = definition.compute_fn.get_config_arg().annotation
                if isinstance(cls, type) and issubclass(cls, dg.Config):
                    cls(**values)
        except Exception as error:  # noqa: BLE001 - every refusal is reported, with its reason
            problems += [f"ops.{name}.config: {reason}" for reason in _reasons(error)]
    built = {}
    for key, entry in (run_config.get("resources") or {}).items():
        definition = job.resource_defs.get(key)
        cls = getattr(definition, "configurable_resource_cls", None)
        if cls is None:
            continue
        try:
            built[key] = cls(**((entry or {}).get("config") or {}))
        except Exception as error:  # noqa: BLE001
            problems += [f"resources.{key}.config: {reason}" for reason in _reasons(error)]
    if not problems:  # the device checks need settings that were built
        problems += _device_refusals({**job.resource_defs, **built})
    return problems
