"""Which paths a process writes, from Python's audit events; and the CLI run under that audit.

    ML_PLAYGROUND_TEST_AUDIT="<watched folder>:<report folder>" python -m tests.support.write_audit <CLI arguments>

runs the CLI and, when it ends, writes <report folder>/rank<RANK>.json (RANK 0 without torchrun):
every path under the watched folder this process opened for writing, created, renamed, linked or
removed, as "<audit event> <absolute path>", in order. Audit events see every write made through
Python's file and os functions, so a rank that writes nothing has an empty list.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

VARIABLE = "ML_PLAYGROUND_TEST_AUDIT"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Audit events whose first two arguments may be paths that the call creates, changes or removes.
_PATH_EVENTS = frozenset(
    {"os.mkdir", "os.rename", "os.link", "os.symlink", "os.remove", "os.rmdir", "os.truncate", "shutil.copyfile"}
)


def record_writes(root: Path) -> list[str]:
    """Start recording this process's writes under `root`; the returned list fills as they happen."""
    prefix = os.path.abspath(root)
    writes: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, _mode, flags = args
            paths = [path] if isinstance(flags, int) and flags & _WRITE_FLAGS else []
        elif event in _PATH_EVENTS:
            paths = list(args[:2])
        else:
            return
        for path in paths:
            if isinstance(path, str | bytes | os.PathLike):
                text = os.path.abspath(os.fsdecode(path))  # pyright: ignore[reportUnknownArgumentType]
                if text == prefix or text.startswith(prefix + os.sep):
                    writes.append(f"{event} {text}")

    sys.addaudithook(hook)
    return writes


def spec(watched: Path, report_dir: Path) -> dict[str, str]:
    """The environment entry that turns the audit on."""
    return {VARIABLE: f"{watched}:{report_dir}"}


def read_writes(report_dir: Path, rank: int) -> list[str]:
    writes: list[str] = json.loads((report_dir / f"rank{rank}.json").read_text(encoding="utf-8"))
    return writes


def main(argv: list[str]) -> int:
    from ml_playground import cli

    watched, report_dir = os.environ[VARIABLE].split(":", 1)
    writes = record_writes(Path(watched))
    try:
        return cli.main(argv)
    finally:
        report = Path(report_dir) / f"rank{os.environ.get('RANK', '0')}.json"
        report.write_text(json.dumps(writes), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
