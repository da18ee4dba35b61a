"""Outputs whose Dagster data version is the sha256 of their content, so an unchanged result leaves its
children fresh however often it is recomputed."""

from __future__ import annotations

import dagster as dg

from ..core.artifacts import content_digest


def versioned(value, output_name: str = "result", **metadata) -> dg.Output:
    return dg.Output(value, output_name=output_name, data_version=dg.DataVersion(content_digest(value)), metadata=metadata)
