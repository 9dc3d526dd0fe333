"""`python -m tests.support.signal_after <CLI arguments>`: the CLI, sent a signal by itself right after
the n-th call of a chosen product function returns.

With ML_PLAYGROUND_TEST_SIGNAL_AFTER="<module>:<function>:<n>:<signal>" (e.g.
`ml_playground.atomic:fsync_dir:1:SIGKILL`) the process wraps `module.function` (callers look it
up as a module attribute, so the product's own calls go through the wrapper) and, after its n-th
call returns, sends itself the signal: SIGKILL to die at exactly that point of a preparation,
SIGSTOP to stay there (holding what it holds) until the test sends SIGCONT. A deterministic
stand-in for `kill` from outside, which races the process. The product's functions run unchanged;
without the variable this is just the CLI.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml_playground import cli

VARIABLE = "ML_PLAYGROUND_TEST_SIGNAL_AFTER"
ROOT = Path(__file__).resolve().parents[2]


def command(*cli_args: str) -> list[str]:
    """The CLI with these arguments, under this switch."""
    return [sys.executable, "-m", __name__, *cli_args]


def spec(point: str, signame: str) -> dict[str, str]:
    """The environment entry that arms the switch at `point` ("module:function:n")."""
    return {VARIABLE: f"{point}:{signame}"}


def arm(value: str) -> None:
    module_name, function_name, count, signame = value.split(":")
    module = importlib.import_module(module_name)
    original: Callable[..., Any] = getattr(module, function_name)
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == int(count):
            os.kill(os.getpid(), getattr(signal, signame))
        return result

    setattr(module, function_name, wrapped)


if __name__ == "__main__":
    if VARIABLE in os.environ:  # unarmed: just the CLI
        arm(os.environ[VARIABLE])
    sys.exit(cli.main(sys.argv[1:]))
