"""What changes with the step count: the learning-rate factor and the order of training problems.

Both are pure functions of (seed, step), so a resumed run sees exactly what an uninterrupted one
would have seen: the LR schedule is rebuilt from the step, the data order from (seed, epoch,
position), with no random-number-generator state to save.
Simplification: one schedule shape (linear warmup, then cosine to a floor).
"""

from __future__ import annotations

import math
import random


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at `step`: linear warmup to 1, then cosine from 1 down to `min_ratio`
    at the last step (for torch.optim.lr_scheduler.LambdaLR)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class DataOrder:
    """Endless, reproducible pass over n items: a fresh shuffle each epoch, taken k at a time.

    Epoch e's order is a shuffle seeded with `seed * 100_003 + e`: one seed per (seed, epoch)
    pair (100_003 is a prime larger than any epoch count, so two pairs never share a seed), and
    recomputable from (seed, epoch) alone, which is why `state()` needs no RNG state.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, position: int = 0):
        if n < 1:
            raise ValueError("DataOrder needs at least one item")
        self.n, self.seed, self.epoch, self.position = n, seed, epoch, position
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        """The next k indices (crossing into a new epoch, and a new shuffle, when needed)."""
        out = []
        while len(out) < k:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.position])
            self.position += 1
        return out

    def state(self) -> dict[str, int]:
        """What a checkpoint stores: DataOrder(n, seed, **state) continues from here."""
        return {"epoch": self.epoch, "position": self.position}
