"""Blocking checks: a run stops when a problem load rejected more rows than its config allows.

They read the counts the load recorded in its materialization metadata, so the threshold that applied is the
one the asset was configured with, and the message names the numbers behind the decision.
"""

import dagster as dg


def _rejected_share_check(asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="rejected_share_within_limit",
        blocking=True,
        description=f"Fails when the share of {asset} rows rejected exceeds max_rejected_share.",
    )
    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None or event.asset_materialization is None:
            return dg.AssetCheckResult(passed=False, description=f"{asset} has no materialization to check")
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        share, limit = float(meta["rejected_share"]), float(meta["max_rejected_share"])
        counts = {k: meta[k] for k in ("rows_read", "accepted", "rejected", "duplicates_collapsed")}
        passed = share <= limit
        verdict = "within" if passed else "exceeds"
        description = (
            f"{meta['rejected']} of {meta['rows_read']} rows of {meta['source']} rejected ({share:.2%}), {verdict} the limit of "
            f"{limit:.2%}" + ("" if passed else "; see the rejected_problems table for each row's location and reason")
        )
        return dg.AssetCheckResult(
            passed=passed,
            description=description,
            metadata={**counts, "rejected_share": share, "max_rejected_share": limit},
        )

    return check


benchmark_rejected_share = _rejected_share_check("benchmark_problems")
pool_rejected_share = _rejected_share_check("raw_problems")
