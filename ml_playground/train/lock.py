"""One writer per out_dir: an exclusive OS-level lock held for a whole training run.

`fcntl.flock` locks belong to the open file, so the kernel releases them when the process ends in
any way (crash, SIGKILL): a stale lock cannot outlive its holder. The lock file holds the pid of
its holder so a second run can say who it is. Readers (sampling, export, TensorBoard) never lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Generator
from pathlib import Path

from ml_playground.errors import OutDirBusyError

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Generator[None]:
    """Hold `out_dir/.lock` exclusively, or fail at once naming the holder's pid."""
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutDirBusyError(
                f"train.runtime.out_dir: {out_dir} is in use by a training run ({_holder(path)}); "
                "wait for it to end or choose another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)
