"""LearnAlign / GradAlign data selection for RL post-training, as a Dagster code location (`definitions.py`)."""

import warnings

# The beta/preview Dagster APIs this code location uses (observable sources, include_sources, data versions) are
# pinned with dagster 1.13.27; their warnings would only fill the `learnalign dev` console and test logs.
try:
    from dagster_shared.utils.warnings import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)
except ImportError:  # pragma: no cover - core/ is usable without Dagster
    pass
