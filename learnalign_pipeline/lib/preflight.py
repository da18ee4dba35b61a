"""The settings check that runs wherever a run starts: `learnalign` calls `preflight` before it creates a run, and
every executor of the code location is wrapped by `preflighted`, so a run launched from the UI's launchpad, by
automation or by `dg launch` checks its whole run config when it starts, before its first step, and fails with
the same message instead of failing at the refused stage after every step before it ran.

Besides each stage's own settings (`check_run_config`), it refuses a training set that cannot fill one GRPO step
when the run config alone says so (a subset budget or warm-up subset smaller than the stage's problems_per_step);
a pool or subset that turns out smaller at run time is refused by the stage before it launches training.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg

from .config import SettingsError, run_config_refusals

# GRPO stage -> (the stage whose config bounds its training set, that config's field)
TRAINING_SET_BOUNDS = {
    "trained_policy": ("selected_subset", "budget"),
    "warmup_policy": ("warmup_policy", "subset_size"),
}


def _op_config(job: dg.JobDefinition, run_config: dict, name: str):
    """The config object op `name` will be built with (its run config values over its defaults), or None."""
    node = job.graph.node_dict.get(name)
    if node is None or not isinstance(node.definition, dg.OpDefinition):
        return None
    if not node.definition.compute_fn.has_config_arg():
        return None
    cls = node.definition.compute_fn.get_config_arg().annotation
    if not (isinstance(cls, type) and issubclass(cls, dg.Config)):
        return None
    values = (((run_config.get("ops") or {}).get(name) or {}).get("config")) or {}
    try:
        return cls(**values)
    except Exception:  # noqa: BLE001 - check_run_config reports it
        return None


def training_set_refusals(job: dg.JobDefinition, run_config: dict) -> list[str]:
    """GRPO stages whose training set is bounded by the run config below one step of problems_per_step."""
    refusals = []
    for stage, (source, field) in TRAINING_SET_BOUNDS.items():
        trainer, bound = _op_config(job, run_config, stage), _op_config(job, run_config, source)
        if trainer is None or bound is None:
            continue
        size, per_step = getattr(bound, field), trainer.problems_per_step
        if size < per_step:
            refusals.append(
                f"ops.{stage}.config: problems_per_step: {source}.{field} = {size} problems cannot fill one step of "
                f"{per_step}: lower problems_per_step to at most {size} or raise {field}"
            )
    return refusals


def preflight(job: dg.JobDefinition, run_config: dict) -> None:
    """Raise SettingsError listing every value of `run_config` the pipeline refuses for `job`. Nothing runs."""
    problems = run_config_refusals(job, run_config) + training_set_refusals(job, run_config)
    if problems:
        raise SettingsError("the run config has values the pipeline refuses:\n  " + "\n  ".join(problems))


_PREFLIGHTED: dict[type, type] = {}


def _with_preflight(executor: dg.Executor) -> dg.Executor:
    """`executor`, its class swapped for a subclass whose `execute` checks the run config first. A subclass, not a
    wrapper: executors such as dagster-dask's check that the run's executor is an instance of their class."""
    cls = type(executor)
    if cls not in _PREFLIGHTED:

        def execute(self, plan_context, execution_plan) -> Iterator:
            preflight(plan_context.job.get_definition(), dict(plan_context.run_config))
            yield from cls.execute(self, plan_context, execution_plan)

        _PREFLIGHTED[cls] = type(f"Preflighted{cls.__name__}", (cls,), {"execute": execute, "__module__": __name__})
    executor.__class__ = _PREFLIGHTED[cls]
    return executor


def preflighted(executor: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """`executor` (same name, config and requirements) with the run-config check at run start."""
    create = executor.executor_creation_fn
    return dg.ExecutorDefinition(
        name=executor.name,
        config_schema=executor.config_schema,
        requirements=executor.get_requirements,
        executor_creation_fn=lambda init_context: _with_preflight(create(init_context)),
        description=executor.description,
    )
