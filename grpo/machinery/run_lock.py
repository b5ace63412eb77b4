"""One training process per run directory: an advisory lock, `RUN/.lock`.

Two processes writing one run would interleave their log lines and prune each other's checkpoints;
a `--resume` of a run that is still training would do the same. So the trainer takes the run
directory's lock before it writes anything there (config.json, logs, checkpoints, the log trimming
of a resume) and keeps it until its run ends; a second process meets it and stops with one line:

    error: runs/gsm8k is in use by another training process (pid 4242 on node1 since 2026-12-06 10:00:00,
    `train.py --config config.yaml`): wait for it to end, or stop it (kill 4242), then continue the run ...

How: `fcntl.flock` on RUN/.lock, which holds the owner's pid, host, start time and command line for
that message. The kernel drops a flock when its process dies however it dies (`kill -9`, a crash, a
lost node's NFS lease aside), so a lock file left behind by a killed run never blocks: its contents
are only read to name a live holder, never to decide. A run that ends normally deletes the file.
Before reading anything, the trainer also looks (`refuse_if_in_use`, which writes nothing): a
--resume of a run still training would otherwise read checkpoints that the run prunes under it.
Under torchrun rank 0 holds the lock for all ranks, and tells them whether it got it (every rank
then fails alike, as with any other bad input). One process never blocks itself: trainers built one
after another in one process (tests, notebooks) share its lock, released when the last lets go.

Simplifications: advisory (only this trainer looks at it: scripts that write into a run directory
take no lock); on platforms without fcntl (Windows) there is no lock; on a network file system the
lock is only as good as its flock (Linux NFS emulates it with POSIX locks; some FUSE mounts refuse it:
then a warning and no lock).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen2.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


@dataclass
class _Held:
    """This process's hold on one run directory's lock file, shared by its RunLocks."""

    fd: int
    path: Path
    pid: int  # the process that took it (a forked child inherits the descriptor, not the lock's ownership)
    key: tuple[int, str]
    count: int = 0
    created: list[Path] = field(default_factory=list)  # directories made to hold the lock file


_HELD: dict[tuple[int, str], _Held] = {}


class RunLock:
    """The lock on `run_dir`, taken at construction (raises InputError, naming the holder, if another
    process has it); `release()` lets it go, as does the garbage collector or the process's exit.

    `dist` (grpo/machinery/distributed.Dist, or None for one process): rank 0 takes the lock and every
    rank learns the outcome (a collective: all ranks construct their RunLock together). `check(run_dir)`
    runs under the lock on every rank, e.g. the trainer's refusal to start a new run in another's
    directory; if it raises, the lock is let go and a lock file or directory made for it is removed
    again, so a refused start leaves the directory as it found it."""

    def __init__(self, run_dir: str | Path, dist: Any = None, check: Callable[[Path], None] | None = None):
        self.run_dir = Path(run_dir)
        self._held: _Held | None = None

        def take() -> None:
            self._held = _take(self.run_dir)

        _on_rank0(take, dist)
        self._finalizer = weakref.finalize(self, _let_go, self._held)
        if check is not None:
            try:
                check(self.run_dir)
            except BaseException:
                self.release(tidy=True)
                raise

    @property
    def held(self) -> bool:
        """Whether this RunLock holds the lock now (False: released, a rank other than 0, no fcntl)."""
        return self._held is not None and self._finalizer.alive

    def release(self, tidy: bool = False) -> None:
        """Let go (once; later calls do nothing). The last holder in this process unlocks and deletes
        the lock file; with `tidy`, also the directories made for it, if they are empty."""
        if self._finalizer.detach() is not None:
            _let_go(self._held, tidy)


def refuse_if_in_use(run_dir: str | Path, dist: Any = None) -> None:
    """Raise the InputError of RunLock if another process holds `run_dir`'s lock, writing nothing (a
    shared flock taken and dropped at once): for the start of a process, before it reads a run that
    another may be changing under it (a --resume of a run still training would find its checkpoints
    pruned as it reads them). Under torchrun rank 0 looks and tells the others (a collective)."""
    _on_rank0(lambda: _look(Path(run_dir)), dist)


def _on_rank0(action: Callable[[], None], dist: Any) -> None:
    """Run `action` on rank 0 (or the one process); its InputError, if any, is raised on every rank."""
    problem = None
    if dist is None or dist.main:
        try:
            action()
        except InputError as e:
            problem = str(e)
    if dist is not None and dist.launched:
        problem = dist.gather_objects(problem)[0]  # rank 0's outcome, on every rank
    if problem:
        raise InputError(problem)


def _look(run_dir: Path) -> None:
    if fcntl is None or (os.getpid(), str(run_dir.resolve())) in _HELD:
        return
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # no lock file: nobody holds it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(_in_use(run_dir)) from None
    except OSError:  # no flock on this file system
        pass
    finally:
        os.close(fd)


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """What the lock file of `run_dir` says about its owner (pid, host, since, command), or None if
    the file is missing or unreadable. It may be stale: only flock knows whether the owner lives."""
    try:
        info = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _take(run_dir: Path) -> _Held | None:
    """This process's hold on `run_dir`'s lock, taken or shared; raises InputError if another has it."""
    if fcntl is None:
        return None
    key = (os.getpid(), str(run_dir.resolve()))
    held = _HELD.get(key)
    if held is None:
        created = [p for p in [run_dir, *run_dir.parents] if not p.exists()]
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        try:
            fd = _open_locked(path)
        except OSError as e:  # a file system without flock: train without the lock rather than not at all
            warnings.warn(f"cannot lock {path} ({e}): nothing stops a second process from writing into {run_dir}",
                          stacklevel=3)
            return None
        if fd is None:
            raise InputError(_in_use(run_dir))
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_me()) + "\n").encode())
        held = _HELD[key] = _Held(fd, path, os.getpid(), key, created=created)
    held.count += 1
    return held


def _open_locked(path: Path) -> int | None:
    """A descriptor of `path` holding its exclusive flock, or None if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        # The previous holder deletes the file when it ends: if it did so between our open and our
        # flock, we hold a lock on a deleted file, which nobody else sees. Then try again.
        try:
            mine, now = os.fstat(fd), os.stat(path)
            if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _let_go(held: _Held | None, tidy: bool = False) -> None:
    if held is None:
        return
    held.count -= 1
    if held.count > 0:
        return
    if held.pid != os.getpid():  # a forked child: the parent still holds this lock, leave it alone
        os.close(held.fd)
        return
    _HELD.pop(held.key, None)
    try:
        held.path.unlink()  # while still locked: the next owner checks that it locked the file that exists
    except OSError:
        pass
    os.close(held.fd)  # unlocks
    if tidy:
        for d in held.created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break


def _me() -> dict[str, Any]:
    command = shlex.join(sys.argv) if sys.argv and sys.argv[0] else sys.executable
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command[:300]}


def _in_use(run_dir: Path) -> str:
    """The one line for a run directory whose lock another process holds."""
    info = holder(run_dir) or {}
    pid, host = info.get("pid"), info.get("host")
    if pid is not None and host == socket.gethostname() and not _alive(pid):
        pid = None  # the file of a dead run, the lock just taken by a process starting now
    if pid is None:  # it has just taken the lock and not yet written its name
        who, stop = "another training process", "stop it"
    else:
        here = host in (None, socket.gethostname())
        who = (f"another training process (pid {pid}{'' if here else f' on {host}'} since {info.get('since', '?')}"
               + (f", `{info['command']}`" if info.get("command") else "") + ")")
        stop = f"stop it (kill {pid}{'' if here else f' on {host}'})"
    where = shlex.quote(str(run_dir))
    return (f"{where} is in use by {who}: wait for it to end or {stop}, then continue that run with "
            f"--resume {where}; or train into another directory with --set train.out_dir=<new dir>")


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's
        pass
    return True
