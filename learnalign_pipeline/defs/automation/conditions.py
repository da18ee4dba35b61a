"""Automation conditions, applied to every asset in one place (`definitions.py`) rather than in each asset file.

- The re-selection path (groups `data`, `policy`, `selection`) re-runs as soon as a parent's *data version*
  changes or its own code version does. Deterministic steps return content-hash data versions, so an input that
  was recomputed to the same bytes triggers nothing.
- Everything else (`training`, `evaluation` and any group added later: GPU training and benchmarks) waits for a
  cron tick and then runs once if an input changed since it last ran. Tag an asset
  `learnalign/automation=manual` to leave it to people and schedules.
"""

import os

import dagster as dg

RESELECTION_GROUPS = frozenset({"data", "policy", "selection"})
MANUAL_TAG = "learnalign/automation"
# When gated GPU steps may start (UTC); override per deployment.
GATED_CRON = os.environ.get("LEARNALIGN_GATED_CRON", "0 2 * * *")

AC = dg.AutomationCondition

# Pending until the asset is next requested: it went missing, a parent's data version changed, or its own code
# version did. Unlike `eager()`, a parent that is merely *about to be* requested does not count: eager would put
# the whole downstream graph into one run, and every asset in a run executes even when its parent recomputes
# to identical bytes. Here each layer waits until its parents have finished with a new data version, so a
# recomputation that changed nothing stops the cascade (one layer per sensor tick).
CHANGED = (AC.newly_missing() | AC.any_deps_match(AC.data_version_changed()) | AC.code_version_changed()).since_last_handled()
READY = ~AC.any_deps_missing() & ~AC.any_deps_in_progress() & ~AC.in_progress()

RESELECT = (AC.in_latest_time_window() & CHANGED & READY).with_label("reselect_on_change")


def gated(cron: str = GATED_CRON) -> dg.AutomationCondition:
    """Like RESELECT, but starts only on the first evaluation after a `cron` tick. The pending part comes first
    in the conjunction so it sees every tick; the cron operand only says "now"."""
    return (CHANGED & READY & AC.cron_tick_passed(cron)).with_label(f"changed_then_cron({cron})")


def condition_for(spec: dg.AssetSpec) -> dg.AutomationCondition | None:
    if spec.tags.get(MANUAL_TAG) == "manual":
        return None
    return RESELECT if spec.group_name in RESELECTION_GROUPS else gated()


def with_automation(defs: dg.Definitions) -> dg.Definitions:
    """Give every materializable asset that has none its automation condition. The permissive variant passes the
    observable sources (SourceAssets, which keep their own cron condition) through unchanged."""
    return defs.permissive_map_resolved_asset_specs(
        func=lambda spec: spec if spec.automation_condition is not None else spec.replace_attributes(automation_condition=condition_for(spec)),
        selection=None,
    )
