"""Jobs."""

from __future__ import annotations

import dagster as dg

# Materializes the whole graph: data -> policies -> rollouts -> gradients -> scores -> subset -> training -> benchmark.
learnalign_job = dg.define_asset_job("learnalign_job", selection=dg.AssetSelection.all(), description="The whole LearnAlign pipeline.")
