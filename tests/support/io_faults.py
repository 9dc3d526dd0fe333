"""Real operating-system write failures, for the tests of every writer: a full disk and an
unwritable folder. Nothing is mocked: the writer's own system calls fail.

- Full disk, `TmpfsDisk`: the folder is a small tmpfs of its own, filled to the last byte while
  the block runs (ENOSPC), where the test may mount one (root with CAP_SYS_ADMIN).
- Full disk, `SizeLimitedDisk`: a file-size limit of 0 bytes (`RLIMIT_FSIZE`; EFBIG) for this
  process while the block runs, with SIGXFSZ ignored so that a refused write is an error instead of
  a kill. Works everywhere. Output capture is suspended meanwhile (pytest captures into files).
- Unwritable folder, `read_only`: a read-only bind mount of the folder onto itself (EROFS) where
  the test may mount; elsewhere its permission bits (EACCES), which only a non-root user obeys.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import resource
import signal
import subprocess
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Protocol

import pytest

DISK_BYTES = 16 << 20


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


def _unmount(folder: Path) -> None:
    # Lazy: a file the failed writer left open must not keep the mount (and the test) alive.
    subprocess.run(["umount", "-l", str(folder)], check=True, capture_output=True, timeout=30)


@functools.cache
def can_mount() -> bool:
    """Whether this process may mount a tmpfs (tried once, on a scratch folder)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        try:
            _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", scratch)
        except (OSError, subprocess.SubprocessError):
            return False
        _unmount(Path(scratch))
    return True


class FullDisk(Protocol):
    """A folder whose disk can be made full for the length of a block."""

    folder: Path

    def full(self) -> contextlib.AbstractContextManager[None]: ...


class TmpfsDisk:
    def __init__(self, folder: Path):
        self.folder = folder

    @contextlib.contextmanager
    def full(self) -> Generator[None]:
        filler = self.folder / ".filler"
        with filler.open("wb", buffering=0) as handle:
            block = b"\0" * (1 << 16)
            for size in (1 << 16, 1 << 12, 1):  # down to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        handle.write(block[:size])
        try:
            yield
        finally:
            filler.unlink()


class SizeLimitedDisk:
    def __init__(self, folder: Path, capsys: pytest.CaptureFixture[str]):
        self.folder = folder
        self.capsys = capsys

    @contextlib.contextmanager
    def full(self) -> Generator[None]:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        with self.capsys.disabled():
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
            try:
                yield
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
                signal.signal(signal.SIGXFSZ, previous)


@contextlib.contextmanager
def tmpfs_disk(folder: Path) -> Generator[TmpfsDisk]:
    folder.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(folder))
    try:
        yield TmpfsDisk(folder)
    finally:
        _unmount(folder)


@contextlib.contextmanager
def read_only(folder: Path) -> Generator[None]:
    """`folder` (which exists) cannot be written while the block runs."""
    if can_mount():
        _mount("--bind", str(folder), str(folder))
        try:
            _mount("-o", "remount,bind,ro", str(folder))
            yield
        finally:
            _unmount(folder)
        return
    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits and may not mount here: no unwritable folder can be made")
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    try:
        yield
    finally:
        folder.chmod(mode)


# What a refused write says, by fault: the operating system's own words.
FULL_DISK_REASONS = (os.strerror(errno.ENOSPC), os.strerror(errno.EFBIG))
UNWRITABLE_REASONS = (os.strerror(errno.EROFS), os.strerror(errno.EACCES))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) with its bytes: what a failed write must
    leave exactly as it was."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
