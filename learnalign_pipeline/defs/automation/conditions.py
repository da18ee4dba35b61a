"""Automation conditions, applied to every asset in one place (`definitions.py`) rather than in each asset file.

- The re-selection path (groups `data`, `selection`) re-runs as soon as a parent's *data version* changes or
  its own code version does. Deterministic steps return content-hash data versions, so an input that was
  recomputed to the same bytes triggers nothing.
- Everything else (`policy`, `training`, `evaluation` and any group added later: GPU training and benchmarks)
  runs the same way but only inside a nightly window (02:00-06:00 UTC by default), so a day's dataset edits cost
  one training run, and the benchmark follows the training in the same window. The warm-up policy is gated too:
  during the day a pool edit is scored under the current warm-up policy, so the row cache reuses every rollout and
  gradient already computed and only new problems are generated and differentiated. Tag an asset
  `learnalign/automation=manual` to leave it to people and schedules.
"""

import os

import dagster as dg

from ...lib.tags import MANUAL_TAG

RESELECTION_GROUPS = frozenset({"data", "selection"})
# The window in which gated GPU steps may start (UTC): it opens on the first cron's tick and closes on the second's.
GATED_CRON = os.environ.get("LEARNALIGN_GATED_CRON", "0 2 * * *")
GATED_CLOSE_CRON = os.environ.get("LEARNALIGN_GATED_CLOSE_CRON", "0 6 * * *")

AC = dg.AutomationCondition

# Pending until the asset is next requested: it went missing, a parent's data version changed, or its own code
# version did. Unlike `eager()`, a parent that is merely *about to be* requested does not count: eager would put
# the whole downstream graph into one run, and every asset in a run executes even when its parent recomputes
# to identical bytes. Here each layer waits until its parents have finished with a new data version, so a
# recomputation that changed nothing stops the cascade (one layer per sensor tick).
CHANGED = (
    AC.newly_missing() | AC.any_deps_match(AC.data_version_changed()) | AC.code_version_changed()
).since_last_handled()
READY = ~AC.any_deps_missing() & ~AC.any_deps_in_progress() & ~AC.in_progress()

RESELECT = (AC.in_latest_time_window() & CHANGED & READY).with_label("reselect_on_change")


def gated(open_cron: str = GATED_CRON, close_cron: str = GATED_CLOSE_CRON) -> dg.AutomationCondition:
    """Like RESELECT, but only between a tick of `open_cron` and the next tick of `close_cron`. (Since-conditions
    evaluate their operands on every tick whatever comes before them in a conjunction, so no change is missed.)"""
    window = AC.cron_tick_passed(open_cron).since(AC.cron_tick_passed(close_cron))
    return (CHANGED & READY & window).with_label(f"changed_in_window({open_cron} .. {close_cron})")


def condition_for(spec: dg.AssetSpec) -> dg.AutomationCondition | None:
    if spec.tags.get(MANUAL_TAG) == "manual":
        return None
    return RESELECT if spec.group_name in RESELECTION_GROUPS else gated()


def with_automation(defs: dg.Definitions) -> dg.Definitions:
    """Give every materializable asset that has none its automation condition. The permissive variant passes the
    observable sources (SourceAssets, which keep their own cron condition) through unchanged."""
    return defs.permissive_map_resolved_asset_specs(
        func=lambda spec: (
            spec
            if spec.automation_condition is not None
            else spec.replace_attributes(automation_condition=condition_for(spec))
        ),
        selection=None,
    )
