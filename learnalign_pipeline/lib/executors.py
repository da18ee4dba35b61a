"""The executor of runs launched without a job of their own: automation runs and the UI's "Materialize" (Dagster's
implicit asset job). A step process that imports torch and transformers and loads the code location costs ~10 s
on an idle 2-core machine (50 s under load, docs/results.md), more than most steps of the loop, so by default
these runs execute in one process. `LEARNALIGN_EXECUTOR=multiprocess` runs each step in its own process, forked
from a server that imported those modules once (parallel shards on a multi-GPU node; the `gpu` pool still limits
accelerator steps). A cluster deployment sets its own executor (k8s) instead."""

from __future__ import annotations

import os
import pkgutil

import dagster as dg

EXECUTORS = ("in_process", "multiprocess")


def preload_modules() -> list[str]:
    """What the fork server imports once: the heavy libraries and every module of the code location."""
    from .. import defs

    own = [m.name for m in pkgutil.walk_packages(defs.__path__, f"{defs.__name__}.")]
    return ["dagster", "torch", "transformers", "polars", "learnalign_pipeline.definitions", *own]


def default_executor(name: str | None = None) -> dg.ExecutorDefinition:
    name = name or os.environ.get("LEARNALIGN_EXECUTOR", "in_process")
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        start = {"forkserver": {"preload_modules": preload_modules()}}
        return dg.multiprocess_executor.configured({"start_method": start}, name="multiprocess_preloaded")
    raise ValueError(f"LEARNALIGN_EXECUTOR={name!r}: expected one of {', '.join(EXECUTORS)}")
