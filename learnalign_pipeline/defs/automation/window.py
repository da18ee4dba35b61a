"""The nightly training window as something a person can open: observing `training_window` (the UI's "Observe"
button, or `learnalign train-now`) opens it at once, until its next close (conditions.py `gated`)."""

import time

import dagster as dg

from .conditions import WINDOW_ASSET, training_window_hours, window_text


@dg.observable_source_asset(
    name=WINDOW_ASSET,
    group_name="automation",
    description=(
        f"Training, warm-up, pre-training and benchmarks run only inside the nightly window "
        f"{window_text(training_window_hours())} (LEARNALIGN_TRAINING_WINDOW). Observe this asset to open the "
        "window now; it closes at the window's next closing hour."
    ),
)
def training_window() -> dg.ObserveResult:
    opened = time.time()
    return dg.ObserveResult(
        data_version=dg.DataVersion(f"{opened:.3f}"),
        metadata={"opened_at": dg.MetadataValue.timestamp(opened)},
    )
