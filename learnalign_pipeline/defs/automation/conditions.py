"""Automation conditions, applied to every asset in one place (`definitions.py`) rather than in each asset file.

- **The re-selection path** (groups `data`, `selection`): when an input gets a new data version, the asset and
  everything below it on the path are requested in the same tick, so the automation sensor launches them as ONE
  run that executes in dependency order. An asset therefore never runs before all its parents on the path are
  current (no interim `selected_subset` built from a new pool and old alignment scores), and a failed step skips
  its children instead of feeding them old inputs.
- **Everything else** (`policy`, `training`, `evaluation`: GPU training and benchmarks) runs when an input has a
  new data version, but only inside the nightly training window (02:00-06:00 UTC by default), so a day's dataset
  edits cost one training run. These steps do not join a run ahead of their inputs: they wait for the input's new
  data version, so a re-selection that reproduces the same subset bytes never retrains. Observing the source asset
  `training_window` (`learnalign train-now`, or "Observe" in the UI) opens the window now, until its next close.
- **Nothing of the loop starts while another part of it is in flight.** Stages load the latest materialization of
  their inputs, so a second run rewriting the pool while the first is still selecting would mix versions.
- Tag an asset `learnalign/automation=manual` to leave it to people and schedules.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import dagster as dg

from ...lib.tags import MANUAL_TAG

RESELECTION_GROUPS = frozenset({"data", "selection"})
WINDOW_ASSET = "training_window"

AC = dg.AutomationCondition
# The observable sources (dataset files, training window): their observations decide, they never join a run ahead.
SOURCES = dg.AssetSelection.all(include_sources=True) - dg.AssetSelection.all()


def training_window_hours(value: str | None = None) -> tuple[int, int]:
    """The nightly window as (open hour, close hour), UTC, from `LEARNALIGN_TRAINING_WINDOW` ("02-06")."""
    value = value if value is not None else os.environ.get("LEARNALIGN_TRAINING_WINDOW", "02-06")
    try:
        start, end = (int(part) for part in value.split("-"))
    except ValueError:
        raise ValueError(f"LEARNALIGN_TRAINING_WINDOW={value!r}: expected two UTC hours like '02-06'") from None
    if not (0 <= start <= 23 and 0 <= end <= 23 and start != end):
        raise ValueError(f"LEARNALIGN_TRAINING_WINDOW={value!r}: hours must be 0-23 and differ")
    return start, end


def window_text(hours: tuple[int, int]) -> str:
    return f"{hours[0]:02d}:00-{hours[1]:02d}:00 UTC"


def _window_crons(hours: tuple[int, int]) -> tuple[str, str]:
    """A cron that ticks every minute inside the window (so a daemon started inside it opens it within a minute,
    not tomorrow: a cron condition is false on a sensor's first evaluation) and the cron of its close. The hours
    are listed one by one: dagster 1.13.27's reverse cron iterator treats a one-hour range "15-15" as every hour."""
    return f"* {','.join(str(h) for h in hours_inside(hours))} * * *", f"0 {hours[1]} * * *"


def hours_inside(hours: tuple[int, int]) -> list[int]:
    """The UTC hours the window covers, in order (a window may wrap past midnight: "22-02" is 22, 23, 0, 1)."""
    start, end = hours
    return sorted(h % 24 for h in range(start, end if start < end else end + 24))


def loop_busy(keys: Iterable[str]) -> dg.AutomationCondition:
    """True while any asset of the loop is part of a queued or running run that has not executed it yet."""
    keys = sorted(keys)
    busy = AC.asset_matches(keys[0], AC.in_progress())
    for key in keys[1:]:
        busy = busy | AC.asset_matches(key, AC.in_progress())
    return busy.with_label("another part of the loop is running")


def _ready(busy: dg.AutomationCondition) -> dg.AutomationCondition:
    return (~AC.any_deps_missing() & ~AC.any_deps_in_progress() & ~AC.in_progress() & ~busy).with_label(
        "inputs present, nothing of the loop running"
    )


# A parent's new data version, unless the run that produced it already planned this asset (it ran, or was skipped
# after a failure, in that run: not re-requested on the next tick).
PARENT_HAS_NEW_DATA = AC.any_deps_match(AC.data_version_changed() & ~AC.executed_with_root_target()).with_label(
    "an input has a new data version"
)
OWN_CHANGE = (AC.newly_missing() | AC.code_version_changed()).with_label("missing, or its code version changed")


def pending(trigger: dg.AutomationCondition) -> dg.AutomationCondition:
    """True from a tick where `trigger` is true until automation requests the asset. Not `since_last_handled()`:
    its reset also counts the asset's own materialization, and a reset and a trigger on the same tick drop the
    trigger, so an edit observed while the previous cascade run was finishing would be lost. Here a new trigger on
    the tick after a request (when `newly_requested` is true) survives."""
    handled = ((AC.newly_requested() & ~trigger) | AC.initial_evaluation()).with_label("requested since")
    return trigger.since(handled)


def reselect(busy: dg.AutomationCondition) -> dg.AutomationCondition:
    parent_requested = (
        AC.any_deps_match(AC.will_be_requested()).ignore(SOURCES).with_label("an input runs in this tick")
    )
    changed = pending(OWN_CHANGE | PARENT_HAS_NEW_DATA | parent_requested)
    return (AC.in_latest_time_window() & changed & _ready(busy)).with_label("re-select when an input changes")


def gated(busy: dg.AutomationCondition, hours: tuple[int, int]) -> dg.AutomationCondition:
    opener, close = _window_crons(hours)
    opened_now = AC.asset_matches(WINDOW_ASSET, AC.newly_updated()).with_label(f"{WINDOW_ASSET} observed")
    window = (AC.cron_tick_passed(opener) | opened_now).since(AC.cron_tick_passed(close))
    window = window.with_label(
        f"inside the training window {window_text(hours)}, or opened by observing {WINDOW_ASSET}"
    )
    changed = pending(OWN_CHANGE | PARENT_HAS_NEW_DATA)
    return (changed & window & _ready(busy)).with_label(f"train in the window {window_text(hours)}")


def _is_manual(spec: dg.AssetSpec) -> bool:
    return spec.tags.get(MANUAL_TAG) == "manual"


def _description(spec: dg.AssetSpec, on_path: bool, hours: tuple[int, int]) -> str:
    if on_path:
        rule = (
            "Automation: re-runs when an input gets a new data version, in one run with everything below it on the "
            "re-selection path (sensor learnalign_reselection)."
        )
    else:
        rule = (
            f"Automation: runs when an input gets a new data version, but only inside the nightly training window "
            f"{window_text(hours)} (sensor learnalign_nightly); `learnalign train-now` opens the window now."
        )
    return f"{spec.description}\n\n{rule}" if spec.description else rule


def with_automation(defs: dg.Definitions) -> dg.Definitions:
    """Give every materializable asset that has no condition of its own the loop's condition, and say in its
    description when it runs. The observable sources keep their own (cron or none)."""
    graph = defs.resolve_asset_graph()
    loop = [
        k.to_user_string()
        for k in graph.materializable_asset_keys
        if graph.get(k).automation_condition is None and graph.get(k).tags.get(MANUAL_TAG) != "manual"
    ]
    busy, hours = loop_busy(loop), training_window_hours()

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.automation_condition is not None or _is_manual(spec):
            return spec
        on_path = spec.group_name in RESELECTION_GROUPS
        return spec.replace_attributes(
            automation_condition=reselect(busy) if on_path else gated(busy, hours),
            description=_description(spec, on_path, hours),
        )

    return defs.permissive_map_resolved_asset_specs(func=apply, selection=None)
