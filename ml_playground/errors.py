"""Error hierarchy: every error a user can cause or fix, with the CLI exit code it maps to.

The CLI catches `MLPlaygroundError`, prints its message as one line on stderr and exits with
`exit_code` (a stop by signal is not a failure: it prints "stopped: ..." and exits 128 + signal).
Anything else escaping the CLI is a bug and keeps its traceback. `summary` quotes a library's
exception inside such a one-line message.
"""

from __future__ import annotations

import os
from pathlib import Path


def summary(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty), for
    errors that quote a library's error in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def os_reason(exc: OSError) -> str:
    """Why an operating-system call failed, for a one-line message: its strerror ("No space left on
    device", "Permission denied"), or, where a file stands in a folder's place, which file."""
    if isinstance(exc, FileExistsError | NotADirectoryError) and exc.filename is not None:
        path = Path(os.fsdecode(exc.filename))
        in_the_way = next((part for part in (path, *path.parents) if part.is_file()), None)
        if in_the_way is not None:
            return f"{in_the_way} is a file, not a folder"
    return exc.strerror or summary(exc)


class MLPlaygroundError(Exception):
    """Base class for errors the user can act on."""

    exit_code: int = 1
    label: str = "error"  # the CLI prints "<label>: <message>"


class ConfigError(MLPlaygroundError):
    """A TOML file is missing, malformed or violates the schema (names file and dotted key)."""

    exit_code = 2


class ExperimentError(MLPlaygroundError):
    """An unknown experiment name or a registry conflict."""

    exit_code = 3


class DataError(MLPlaygroundError):
    """A corpus, dataset file or metadata file is missing or invalid."""

    exit_code = 4


class CheckpointError(MLPlaygroundError):
    """A checkpoint is missing, truncated, corrupted or incompatible."""

    exit_code = 5


class DeviceError(MLPlaygroundError):
    """The configured device or dtype is not usable on this machine."""

    exit_code = 6


class ExportError(MLPlaygroundError):
    """An export (Hugging Face, GGUF, Ollama) cannot be produced or verified."""

    exit_code = 7


class MissingDependencyError(MLPlaygroundError):
    """An optional tool (LIT, llama.cpp converter, ...) is not installed; the message says how."""

    exit_code = 8


class DistributedError(MLPlaygroundError):
    """A distributed (torchrun) launch is misconfigured or a peer failed."""

    exit_code = 9


class OutDirBusyError(MLPlaygroundError):
    """Another training run holds the out_dir's lock (one writer per out_dir)."""

    exit_code = 10


class TrainingDivergedError(MLPlaygroundError):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoints are kept."""

    exit_code = 11


class TrainingStoppedError(MLPlaygroundError):
    """A signal asked the run to stop; it saved ckpt_last.pt and the same command resumes it.
    Exits with 128 + the signal's number, as a shell reports a process ended by that signal."""

    label = "stopped"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
