"""A checkpoint that cannot be written: one line, every rank agreeing, nothing half-saved left behind.

A full disk (ENOSPC), a read-only file system (EROFS) or a directory the run may not write
(EACCES) fails a save wherever it happens: rank 0 writing the model, any rank writing its optimizer
shards, or rank 0 writing the manifest and renaming the checkpoint into place. checkpoint.py's
`save_checkpoint` runs each stage through `attempt`, and the ranks `agree` on the outcome (a
collective) before the next stage, so a rank that failed never leaves the others waiting at a
barrier, and nothing is renamed unless every rank succeeded. Then every rank raises `SaveFailed`:
the run stops (train.py: exit 2) with `save_failure`'s line, which names the directory, the reason,
how much room a checkpoint takes and what is free there, and how to continue.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch.distributed.checkpoint.api import CheckpointException

from qwen2.errors import InputError
from qwen2.lora import has_lora

from .distributed import Dist
from .manifest import checkpoint_bytes


class SaveFailed(InputError):
    """A checkpoint could not be written (a full disk, a read-only or forbidden directory): the run
    stops with one line (train.py: exit 2); the checkpoints saved before are untouched."""


# What writing a file raises when the disk refuses: torch.save a RuntimeError of its zip writer,
# safetensors its own error, DCP a CheckpointException holding each rank's; and the InputError of
# a model file read back shorter than its header says (a writer that did not say so).
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError, CheckpointException, InputError)


def attempt(write: Any) -> str | None:
    """Run `write`; None, or why it failed in a few words."""
    try:
        write()
        return None
    except WRITE_ERRORS as e:
        reason = first_line(e)
        cause = _inner(e) if isinstance(_inner(e), OSError) else None
        found = re.search(r"os error (\d+)", reason)
        if cause is None and found:  # safetensors: "I/O error: No space left on device (os error 28)"
            cause = OSError(int(found.group(1)), os.strerror(int(found.group(1))))
        if cause is None or not cause.strerror:
            return reason
        return f"{cause.strerror} ({errno.errorcode.get(cause.errno, cause.errno)})"


def agree(error: str | None, dist: Dist) -> str | None:
    """The first rank's error, on every rank: all stop or all go on (none waits at a barrier for
    a rank that has failed)."""
    return next((e for e in dist.gather_objects(error) if e), None)


def save_failure(root: Path, step: int, reason: str, saved: list[Path], model: Any, optimizer: Any,
                 dist: Dist) -> str:
    """One line: where, why, how much room a checkpoint takes, what is kept and how to go on."""
    if saved:
        need, basis = checkpoint_bytes(saved[-1]), f"the size of {saved[-1].name}"
    else:
        tensors = ([p for p in model.parameters() if p.requires_grad] if has_lora(model)
                   else list(model.state_dict().values()))
        state = [t for _, s in optimizer.states() for t in s.values()]
        need = sum(t.numel() * t.element_size() for t in tensors)  # a DTensor's numel is the whole tensor's
        need += dist.world * sum(t.numel() * t.element_size() for t in state)  # this rank's shards, times the ranks
        basis = "model + optimizer state"
    where = next(p for p in (root, *root.parents) if p.exists())
    free = shutil.disk_usage(where).free
    if free < need and "(ENOSPC)" not in reason:  # torch.save's zip writer says "unexpected pos" for a full disk
        reason = f"out of space ({reason})"
    kept = (f"the checkpoints saved before are untouched (the newest: {saved[-1]})" if saved
            else "no checkpoint of this run exists yet")
    return (f"cannot save the checkpoint of step {step} in {root}: {reason}; a checkpoint needs about "
            f"{_size(need)} ({basis}), {'only ' if free < need else ''}{_size(free)} is free there. Training stops; "
            f"{kept}: make room (or make the directory writable) and continue with {dist.train_command} --resume "
            f"{shlex.quote(str(root.parent))}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _inner(e: BaseException) -> BaseException:
    """A CheckpointException holds each rank's own (exception, traceback): the first rank's exception."""
    if isinstance(e, CheckpointException) and e.failures:
        failure = next(iter(e.failures.values()))
        return failure[0] if isinstance(failure, tuple) else failure
    return e


def first_line(e: BaseException) -> str:
    """`e` in a few words (a CheckpointException: the first failing rank's)."""
    e = _inner(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"
