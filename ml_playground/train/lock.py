"""One writer per out_dir: an exclusive OS-level lock (`dir_lock`) on `out_dir/.lock`, held for a
whole training run. Readers (sampling, export, TensorBoard) never lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from pathlib import Path

from ml_playground.dir_lock import exclusive_lock
from ml_playground.errors import OutDirBusyError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Generator[None]:
    """Hold `out_dir/.lock` exclusively, or fail at once naming the holder's pid."""

    def busy(holder: str) -> OutDirBusyError:
        return OutDirBusyError(
            f"train.runtime.out_dir: {out_dir} is in use by a training run ({holder}); "
            "wait for it to end or choose another out_dir"
        )

    with exclusive_lock(out_dir / LOCK_NAME, busy):
        yield
