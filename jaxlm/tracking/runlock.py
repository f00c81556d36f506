"""A run directory's owner: an exclusive `flock` on `<run>/.lock`, held for the run's whole life.

The lock file records the holder's PID and host so a refused command can name it.
The kernel releases a `flock` when its process dies (even by `kill -9`), so a
lock never outlives its run, and a run whose summary still says `running` while
its lock is free was killed: readers show it as `stopped (killed)`.

Standard library only (this is the tracking room: no JAX, nothing else of jaxlm),
so `compare`, sweep reports and any training loop can ask the same question.
The lock file is never deleted while a run lives (deleting a lock file races with
a second locker); it is small and harmless in a finished run.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_FILE = ".lock"
KILLED = "stopped (killed)"  # what readers show for a `running` summary whose lock is free


class RunInUseError(RuntimeError):
    """Another live process holds the run directory's lock; the message names its PID and host."""


def _holder_text(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
        return f"PID {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (PID unknown)"


class RunLock:
    """An acquired lock on a run directory; `release()` (or process exit) frees it."""

    def __init__(self, run_dir: Path, fd: int, created: bool = False):
        self.run_dir, self.fd = run_dir, fd
        self.created = created  # this process made the lock file (a refused command may take it away again)

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def release(self, remove: bool = False) -> None:
        """Drop the lock; with `remove`, also delete the lock file if this process created it (a command
        that was refused leaves the directory as it found it)."""
        if self.fd >= 0:
            if remove and self.created:
                (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1


def acquire(run_dir: str | Path) -> RunLock:
    """Lock `run_dir` (which must exist) for this process; RunInUseError naming the holder if it is taken."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    try:
        fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), True
    except FileExistsError:
        fd, created = os.open(path, os.O_RDWR | os.O_CLOEXEC), False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunInUseError(f"run directory '{run_dir}' is in use by {_holder_text(path)}") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode(), 0)
    return RunLock(run_dir, fd, created)


def holder(run_dir: str | Path) -> str | None:
    """ "PID n on host h" when a live process holds `run_dir`'s lock; None when it is free (or there is none)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(path)
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return None


def shown_status(run_dir: str | Path, status: str | None) -> str | None:
    """A summary's status as readers should show it: `running` without a live holder is `stopped (killed)`."""
    if status == "running" and holder(run_dir) is None:
        return KILLED
    return status
