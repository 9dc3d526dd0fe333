"""`one_line_error`: a CLI subprocess failed as the CLI promises: the exit code, one line on stderr, no traceback."""

from __future__ import annotations

import subprocess


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one stderr line of a CLI run that exited with `code` (asserting there is no more)."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
