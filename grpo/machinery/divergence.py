"""Runs whose numbers go non-finite: no update from them, no checkpoint of them, and a clean stop.

A too-high learning rate or a bad batch makes a step's numbers non-finite; from
then on every later step, and every later checkpoint, would be garbage. So (trainer.py):
  - a step whose sampler logits (NaN entropies), loss or gradient norm are not finite applies no
    optimizer update (with mu > 1 the passes before the first non-finite one have been applied)
    and is logged as `skipped_nonfinite`;
  - while such steps come in a row no checkpoint is written, and never one with non-finite weights;
  - after `train.max_nonfinite_steps` of them in a row the run stops with one line (`Diverged`,
    exit code 4 in train.py) that names the last good checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import list_checkpoints


class Diverged(RuntimeError):
    """train.max_nonfinite_steps steps in a row were non-finite: the run stops with one line."""


class NonfiniteGuard:
    def __init__(self, limit: int, out_dir: Path, lr: float, say: Callable[[str], None]):
        self.limit, self.out_dir, self.lr, self.say = limit, out_dir, lr, say
        self.streak = 0  # steps in a row with non-finite numbers

    def record(self, step: int, nonfinite: bool) -> None:
        """The outcome of a completed step; raises Diverged at the limit."""
        self.streak = self.streak + 1 if nonfinite else 0
        if not self.streak:
            return
        self.say(f"step {step}: non-finite numbers (sampler logits, loss or gradient norm), no update applied "
                 f"({self.streak} in a row; the run stops at {self.limit})")
        if self.streak >= self.limit:
            ckpts = list_checkpoints(self.out_dir)
            last = f"the last good checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint was saved"
            raise Diverged(f"{self.streak} steps in a row (to step {step}) had non-finite numbers: the run diverged "
                           f"and stops ({last}). Lower optim.lr (now {self.lr:g}) or check the data, then start "
                           f"again or continue with --resume {self.out_dir}")


def nonfinite_tensors(tensors: Iterable[Tensor]) -> int:
    """How many of `tensors` (this rank's) hold a NaN or an infinity."""
    return sum(int(not torch.isfinite(t.detach()).all()) for t in tensors)
