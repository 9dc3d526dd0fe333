"""One writer at a time: an exclusive OS-level lock on a lock file, held for a block.

`fcntl.flock` locks belong to the open file, so the kernel releases them when the process ends in
any way (crash, SIGKILL): a stale lock cannot outlive its holder. The lock file holds the pid of
its holder so a second process can say who it is. The file stays when the lock is released
(removing it would race a new holder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Generator
from pathlib import Path


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: Callable[[str], Exception]) -> Generator[None]:
    """Hold `path` (created when missing) exclusively, or raise `busy(holder)` at once, where
    holder reads "pid N" (or "another process")."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(_holder(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield
    finally:
        os.close(fd)  # releases the lock
