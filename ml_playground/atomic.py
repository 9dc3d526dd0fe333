"""Atomic file writes: temp file in the same folder, fsync, `os.replace`, fsync of the folder.

A crash or kill at any moment leaves either the old file or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


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


class _RecordingFile(io.FileIO):
    """A file that remembers the operating system's refusal of a write (a full disk, a size limit)."""

    failure: OSError | None = None

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            self.failure = exc
            raise


@contextlib.contextmanager
def atomic_binary_writer(path: Path) -> Generator[BinaryIO]:
    """Yield a binary file that replaces `path` only when the block exits without error.

    A write the operating system refused is raised as its OSError even when the library writing
    through the handle reports it as an error of its own (torch.save: a RuntimeError)."""
    with atomic_output_path(path) as tmp:
        raw = _RecordingFile(tmp, "wb")
        handle = io.BufferedWriter(raw)
        try:
            yield handle
            handle.flush()
        except Exception as exc:
            if raw.failure is None or raw.failure is exc:
                raise
            raise raw.failure from exc
        finally:
            with contextlib.suppress(OSError):  # after a failed write the final flush fails again
                handle.close()


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
