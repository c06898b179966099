"""The lock `tally up` holds on its data directory for as long as it runs.

One `tally up` per data directory: a second one would adopt the first's PostgreSQL, start nodes
that wait as standbys behind the first's, and on its way out stop that PostgreSQL under the
first. So `tally up` takes this lock before it touches anything in the directory, and a second
one is refused at once, told the directory and the pid that holds it.

The lock is an OS lock (flock, exclusive, never waited for) on `DATA_DIR/tally-up.lock`, held
through an open file for the process's life: the kernel drops it when the holder exits however
it exits, kill -9 included, so a crash never leaves a directory locked (a pid file alone would
need guessing whether its pid still is the holder). The file holds the holder's pid, one line,
for the refusal's message only; it is never removed (removing it would let a third process lock
a new file of the same name while the first still holds the old one). The open file is not
inherited by children (Python opens files non-inheritable): a PostgreSQL that outlives a killed
`tally up` must not keep its directory locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Final

LOCK_FILE: Final = "tally-up.lock"
# The holder writes its pid just after taking the lock: a refusal in between waits this long
# for it, so that its message can name the holder.
HOLDER_PID_WAIT_S: Final = 1.0
_PID_POLL_S: Final = 0.05


class DataDirectoryInUse(RuntimeError):
    """Another process holds the data directory's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a pid it has not written yet"
        super().__init__(
            f"{data_dir} is in use by another tally up ({holder}): stop that one first, or give "
            "this one another --data-dir"
        )
        self.data_dir = data_dir
        self.pid = pid


class DataDirectoryLock:
    """A held lock on one data directory (release() or exit to let it go)."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = fd

    def release(self) -> None:
        """Let the directory go (closing the file drops the flock). Safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def acquire(data_dir: Path | str) -> DataDirectoryLock:
    """Lock data_dir (made if missing) for this process, or DataDirectoryInUse at once."""
    directory = Path(data_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirectoryInUse(directory, _holder_pid(directory / LOCK_FILE)) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return DataDirectoryLock(directory, fd)


def _holder_pid(path: Path) -> int | None:
    """The pid the holder wrote, waiting a moment for a holder that has just taken the lock."""
    deadline = time.monotonic() + HOLDER_PID_WAIT_S
    while True:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
        if time.monotonic() >= deadline:
            return None
        time.sleep(_PID_POLL_S)
