"""Ctrl-C during training: finish or abandon the step in progress, never half of it.

The trainer saves the last completed step when interrupted; this class decides which step that
is. Simplification: SIGINT only (a SIGTERM from a job scheduler ends the process at once; the
last periodic checkpoint is then the one to resume from). With several processes (torchrun) a
Ctrl-C also stops at once: one rank cannot finish a step alone (the others would wait for it in
their collectives) and torchrun kills every rank 30 s after it forwards the signal, so there too
the last periodic checkpoint is the one to resume from.
"""

from __future__ import annotations

import signal
import sys


class Interrupt:
    """Ctrl-C handling that never tears a step in half.

    Before a step's first optimizer update, SIGINT raises KeyboardInterrupt at once: the step is
    abandoned and the weights are still those of the last completed step. From `defer()` (called
    just before the first update) to `release()` (after the step is logged), it is held back and
    raised at `release()`, so the step in progress completes first.
    """

    def __init__(self, hold: bool = True):
        self.hold = hold  # False: never hold a Ctrl-C back (several processes)
        self.deferring = self.pending = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if not self.deferring:
            raise KeyboardInterrupt
        self.pending = True
        print("\ninterrupt: finishing the current step, then saving", file=sys.stderr)

    def defer(self) -> None:
        self.deferring = self.hold

    def release(self) -> None:
        self.deferring = False
        if self.pending:
            raise KeyboardInterrupt

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)
