"""Stopping a run from outside, never half a step: Ctrl-C, a job scheduler's signal, a dead launcher.
The step in progress completes or is abandoned, the last completed step is saved, and the exit code
says what happened (docs/preemption.md: a SLURM job script that requeues):

    Ctrl-C (SIGINT)                               exit 130  stopped by hand
    train.stop_signals (SIGTERM, SIGUSR1)         exit 75   EX_TEMPFAIL: stopped from outside, the last
    the torchrun launcher died (an orphan)                  completed step is saved: resume it

A step can be abandoned until its first optimizer update (the weights are still those of the last
completed step); from that update on it must complete, or the saved state would be half of one.

One process: a signal before the step's first update abandons it at once (the quickest way out,
what Ctrl-C always did), after it the step completes; then the last completed step is saved.

torchrun: one rank cannot leave a step alone (the others would wait for it in their next
collective), so the ranks act only where they all meet, and decide from numbers summed over ranks,
identical on every rank (a signal may reach one rank only; torchrun forwards SIGINT and SIGTERM to
every worker):
  (a) the step's first update: each rank's vote rides on the all-reduce that the non-finite check
      makes anyway. A stop asked of any rank abandons the step on every rank when finishing it would
      likely overrun the grace period on some rank: seconds since its signal + the longest
      first-update-to-end time of the last 3 steps + the longest save's seconds > grace (no step
      measured yet: abandon). Otherwise the step completes. The rollout before it cannot be
      interrupted: the ranks meet only after it.
  (b) the step boundary: one all-reduce of a few numbers per step. A stop asked of any rank stops
      every rank there: they save together (the collective save) and exit with the same code.
The grace period is train.grace_seconds (the scheduler's time from its signal to SIGKILL) and under
torchrun at most torchrun's own: it forwards SIGTERM, SIGINT (and any signal in its
--signals-to-handle) to every worker and SIGKILLs them its shutdown timeout later,
TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (30 by default; a worker sees that variable, not torchrun's
--shutdown-timeout flag). torchrun itself then exits 1 whatever its workers did: rank 0 also writes
`preempted.json` into the run directory when it stops with exit code 75 (`mark_preempted`).

The launcher's death. torchrun starts every worker in a session of its own, so a SIGKILL of torchrun
(or a signal it does not handle, such as SIGUSR1 unless its --signals-to-handle names it) reaches
none of them: they would train on as orphans. Each worker notes its parent (the launcher) when this
module is imported and checks at (a) and (b) whether it changed. Orphans stop like a signalled run:
they still reach each other (the launcher's store is only needed to start; tested with gloo), so
they agree, save the last completed step together and exit 75, which no one reads. Not
PR_SET_PDEATHSIG: it fires when the launcher's *thread* that started the worker ends, not only when
the launcher does, and the ranks could still act only at (a) and (b).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EX_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped by a signal or a dead launcher, checkpoint saved
EX_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT")  # what train.stop_signals may name
PREEMPTED_FILE = "preempted.json"
_PARENT = os.getppid()  # as early as the trainer is imported: a torchrun worker's launcher
_LAUNCHER_DIED = "the torchrun launcher died"


class Stopped(KeyboardInterrupt):
    """The run stops: raised on every rank alike (at the same meeting point). `code`: the exit code."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def torchrun_shutdown_timeout() -> float:
    """Seconds torchrun waits after forwarding a signal before it SIGKILLs its workers."""
    for name in ("PET_SHUTDOWN_TIMEOUT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"):
        try:
            return float(os.environ[name])
        except (KeyError, ValueError):
            pass
    return 30.0


class Interrupt:
    """The signals that stop a run, handled so that no step is torn in half (see the module's text).

    The trainer calls `commit()` from where the step must complete, `first_update()` before each
    optimizer update and `abandon_if()` with its sum over ranks, `at_boundary()` once the step is on
    the books, and saves inside `saving()`. `dist` is grpo.machinery.distributed.Dist."""

    def __init__(self, dist: Any, signals: Sequence[str] = ("SIGTERM", "SIGUSR1"), grace: float = 60.0):
        self.dist = dist
        self.names = ["SIGINT", *signals]
        self.grace = min(grace, torchrun_shutdown_timeout()) if dist.launched else grace
        self.asked: set[str] = set()  # the signals this process got
        self.asked_at: float | None = None
        self.holding = False  # the step in progress must complete: a signal waits for the boundary
        self._update_at: float | None = None  # when this step's first update began
        self._tails: deque[float] = deque(maxlen=3)  # seconds from the first update to the step's end
        self._save_seconds = 0.0
        self._previous = {name: signal.signal(getattr(signal, name), self._handle) for name in self.names}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        first = not self.asked
        self.asked.add(name)
        if self.asked_at is None:
            self.asked_at = time.monotonic()
        if not self.holding and not self.dist.launched:  # one process, before any update: abandon it now
            raise self._stopped(self._votes())
        if first and self.dist.main:  # os.write: print() may be in the middle of a write it would re-enter
            then = "finishing the current step" if not self.dist.launched else "stopping where the ranks next meet"
            os.write(2, f"\n{name}: {then}, then saving\n".encode())

    def _votes(self) -> list[float]:
        """What this process was asked: [its launcher died, then one flag per signal in self.names]."""
        orphan = self.dist.launched and os.getppid() != _PARENT
        return [float(orphan), *(float(n in self.asked) for n in self.names)]

    def _stopped(self, counts: list[float]) -> Stopped:
        """The stop that `counts` (votes summed over ranks) ask for: the same on every rank."""
        orphan, *per_signal = counts
        reasons = [n for n, c in zip(self.names, per_signal) if c] + ([_LAUNCHER_DIED] if orphan else [])
        preempted = orphan or any(n != "SIGINT" for n in reasons)
        self.holding = True  # stopping: a later signal does not cut the stop's save short
        return Stopped(EX_PREEMPTED if preempted else EX_INTERRUPTED, ", ".join(reasons).replace("SIGINT", "Ctrl-C"))

    def commit(self) -> None:
        """From here the step in progress completes (a signal now waits until `at_boundary`)."""
        self.holding = True

    def first_update(self) -> list[float]:
        """Before each optimizer update: commits the step, and returns this process's votes for the
        step's first update ([would overrun the grace period, then `_votes`]; zeros for later ones),
        to be summed over ranks in the update's own all-reduce and passed to `abandon_if`."""
        votes = self._votes()
        if self._update_at is not None:
            return [0.0] * (1 + len(votes))
        self.commit()
        self._update_at = time.monotonic()
        return [float(any(votes) and self._late()), *votes]

    def _late(self) -> bool:
        """Would finishing the step and saving it likely run past the grace period of a signal?"""
        if self.asked_at is None:
            return False  # an orphan: nobody is about to kill it
        if not self._tails:
            return True  # no step of this process measured yet: abandoning is the safe side
        return time.monotonic() - self.asked_at + max(self._tails) + self._save_seconds > self.grace

    def abandon_if(self, summed: list[float]) -> None:
        """With `first_update`'s votes summed over ranks: a stop is asked and finishing would be too
        late, so every rank abandons the step before any update (raises Stopped)."""
        if summed and summed[0] and any(summed[1:]):
            raise self._stopped(summed[1:])

    def at_boundary(self) -> None:
        """The step is on the books. One all-reduce of every rank's votes (torchrun): a stop asked
        of any rank stops them all here (raises Stopped); otherwise the next step may be abandoned."""
        if self._update_at is not None:
            self._tails.append(time.monotonic() - self._update_at)
        counts = self.dist.sum(self._votes())
        self.holding, self._update_at = False, None
        if any(counts):
            raise self._stopped(counts)

    @contextmanager
    def saving(self) -> Iterator[None]:
        """A save: never cut short by a signal, which is acted on after it (one process) or at the
        next meeting point (torchrun). The longest is what the stop's own save will likely take."""
        was, self.holding = self.holding, True
        started = time.monotonic()
        try:
            yield
        finally:
            self.holding = was
        self._save_seconds = max(self._save_seconds, time.monotonic() - started)  # the longest save so far
        if not was and self.asked and not self.dist.launched:
            raise self._stopped(self._votes())

    def restore(self) -> None:
        for name, previous in self._previous.items():
            signal.signal(getattr(signal, name), previous)


def mark_preempted(run_dir: str | Path, step: int, reason: str, command: str) -> None:
    """`preempted.json` in the run directory: the run stopped with exit code 75 and step `step` saved.
    Under torchrun the job script sees torchrun's exit code (1), so this file is what it tests."""
    info = {"step": step, "reason": reason, "exit_code": EX_PREEMPTED, "continue_with": command}
    (Path(run_dir) / PREEMPTED_FILE).write_text(json.dumps(info, indent=2) + "\n")


def clear_preempted(run_dir: str | Path) -> None:
    """A run that starts again is no longer preempted."""
    (Path(run_dir) / PREEMPTED_FILE).unlink(missing_ok=True)
