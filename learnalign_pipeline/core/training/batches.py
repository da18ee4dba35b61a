"""The order in which training visits problems: seeded permutations, epoch after epoch (pre-training and GRPO)."""

from __future__ import annotations

import random
from collections.abc import Sequence


def epoch_batches(ids: Sequence[int], batch_size: int, steps: int, seed: int):
    """`steps` batches walking through seeded permutations of `ids` epoch after epoch."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            epoch = list(ids)
            rng.shuffle(epoch)
            # A batch straddling two epochs must not hold a problem twice: defer the repeats to later in the epoch.
            pending = set(order)
            order.extend([i for i in epoch if i not in pending] + [i for i in epoch if i in pending])
        yield order[:batch_size]
        del order[:batch_size]
