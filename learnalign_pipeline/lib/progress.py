"""Progress of a long step, for people: a progress bar on the console (when it is a terminal) and a log line in
the run's event log every tenth of the way, so the UI shows how far a step is."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tqdm import tqdm


@contextlib.contextmanager
def step_progress(context, total: int, unit: str, log: bool = True) -> Iterator[Callable[[dict], None]]:
    """A callback for a loop of `total` iterations (`unit`, e.g. "GRPO steps") that reports a record (a dict of
    numbers) per iteration. The bar only draws on a terminal and disappears when done. `log=False` leaves the
    event-log lines to the caller (a launched training script writes its own)."""
    bar = tqdm(total=total, desc=f"  {unit}", unit="it", leave=False, disable=None, dynamic_ncols=True)
    done = 0
    every = max(1, total // 10)

    def report(record: dict) -> None:
        nonlocal done
        done += 1
        bar.update(1)
        numbers = {k: round(v, 4) for k, v in record.items() if isinstance(v, float)}
        bar.set_postfix({k: v for k, v in numbers.items() if k in ("loss", "reward_mean")}, refresh=False)
        if log and (done % every == 0 or done == total):
            context.log.info(f"{unit} {done}/{total}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))

    try:
        yield report
    finally:
        bar.close()
