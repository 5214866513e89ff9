"""A run's workdir: checked before anything is written, and held by one run at a time.

`check_workdir` refuses an empty path, a file, and a place that cannot be written, before the run
creates anything. `WorkdirLock` is an exclusive `fcntl.flock` on `WORKDIR/.lock`, taken by process 0
for the whole run: a second run on the same workdir stops with the holder's host, pid and start
time. The OS releases the lock when the holding process dies (SIGKILL included), so a killed run
never leaves a stale lock. (flock is per host; on a network file system shared by several hosts it
protects against a second run only where that file system supports it.)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from dcjax.config_lib import ConfigError

LOCK_FILE = ".lock"


class WorkdirError(ConfigError):
    """A workdir that cannot hold this run; the message says why."""


def check_workdir(workdir: str) -> Path:
    """The workdir as a Path, if it can be used; nothing is created."""
    if not workdir or not workdir.strip():
        raise WorkdirError("--workdir is empty: give the directory for this run's checkpoints and "
                           "metrics (e.g. --workdir=runs/digits)")
    path = Path(workdir).expanduser()
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise WorkdirError(f"--workdir={workdir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir={workdir} is not writable ({existing}: permission denied)")
    return path


def create_workdir(path: Path) -> None:
    """mkdir -p, with a one-line error for what the OS refuses (read-only file system, ...)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--workdir={path} cannot be created ({e.strerror or e})") from None


class WorkdirLock:
    """Exclusive lock on WORKDIR/.lock for the life of this object (process 0 only)."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorkdirError(f"--workdir={self.path.parent} is not writable "
                               f"({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirError(f"--workdir={self.path.parent} is in use by another run ({holder}); "
                               f"wait for it to finish, stop it, or use another --workdir") from None
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        record = {}
    if not record:
        return "holder unknown"
    return f"host {record.get('host')}, pid {record.get('pid')}, started {record.get('started')}"
