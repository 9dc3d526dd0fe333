"""Atomic file writes: temp file in the same folder, fsync, `os.replace`, fsync of the folder.

A crash or kill at any moment leaves either the old file or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_path(path: Path) -> Generator[Path]:
    """Yield a temp path beside `path` for a writer that needs a file name (a library, a
    subprocess); it replaces `path` only when the block exits without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (or keep the old one).
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_binary_writer(path: Path) -> Generator[BinaryIO]:
    """Yield a binary file that replaces `path` only when the block exits without error."""
    with atomic_output_path(path) as tmp, tmp.open("wb") as handle:
        yield handle


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_binary_writer(path) as handle:
        handle.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def link_or_copy_atomic(source: Path, path: Path) -> None:
    """Make `path` an atomic copy of `source`: a hard link when the file system allows one (no
    bytes written; safe because every writer here replaces files instead of changing them), else a
    byte copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        with atomic_output_path(path) as copy:
            shutil.copyfile(source, copy)
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
