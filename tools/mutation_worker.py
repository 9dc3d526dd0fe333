"""A Cosmic Ray HTTP worker that runs each mutant's tests in a fork of a preloaded interpreter.

`python tools/mutation_worker.py COPY` serves Cosmic Ray's own mutate-and-test endpoint
(`cosmic_ray.distribution.http.handle_mutate_and_test`, what `cosmic-ray http-worker` serves) on
127.0.0.1 at a port the kernel picks, and prints that port as its first line. COPY is this
worker's copy of the project: mutants are written there, so workers never see each other's.

Why a fork: a test command `python -m pytest ...` spends ~2.5 s importing torch, pytest and its
plugins before a targeted test subset runs for well under a second. This worker imports them once; for each
mutant it forks, and the child runs `pytest.main` on the command's arguments, importing
ml_playground afresh from the mutated copy (the parent never imports it, and no bytecode is
written, so no stale .pyc is read). Any other command runs as Cosmic Ray runs it (a subprocess).
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import select
import shlex
import signal
import socket
import sys
import tempfile
from pathlib import Path

PYTEST_PREFIX = ("python", "-m", "pytest")
# What every test subset imports; loaded once in the parent so each fork starts with them (with
# pytest's plugins: their modules are not rewritten, as the test command runs --assert=plain).
PRELOAD = ("numpy", "torch", "pydantic", "psutil", "pytest")


def run_forked(command: str, timeout: float) -> tuple[object, str]:
    """Cosmic Ray's `run_tests` contract: (TestOutcome, output); a timeout or a failure kills."""
    from cosmic_ray.testing import run_tests
    from cosmic_ray.work_item import TestOutcome

    words = shlex.split(command)
    if tuple(words[:3]) != PYTEST_PREFIX:
        return run_tests(command, timeout)
    with tempfile.TemporaryFile() as output:
        pid = os.fork()
        if pid == 0:  # the child: run the tests, never return into the server
            code = 1
            try:
                os.setsid()
                os.dup2(output.fileno(), 1)
                os.dup2(output.fileno(), 2)
                import pytest

                code = int(pytest.main(words[3:]))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        code = _exit_code(pid, timeout)
        if code is None:
            return TestOutcome.KILLED, "timeout"
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    return (TestOutcome.SURVIVED if code == 0 else TestOutcome.KILLED), text


def _exit_code(pid: int, timeout: float) -> int | None:
    """The child's exit code; None if it ran past `timeout` seconds (it and its children are killed)."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        os.killpg(pid, signal.SIGKILL)  # the child leads its own session (setsid)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if ready else None


def main(copy: Path) -> None:
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ["PYTHONPATH"] = str(copy)  # subprocesses the tests start import the copy too
    sys.dont_write_bytecode = True
    os.chdir(copy)
    sys.path.insert(0, str(copy))
    for name in PRELOAD:
        __import__(name)
    for plugin in importlib.metadata.entry_points(group="pytest11"):
        plugin.load()
    if any(name.split(".")[0] in {"ml_playground", "tests"} for name in sys.modules):
        raise SystemExit("mutation worker: a preloaded module imported ml_playground; mutants would not be seen")

    import asyncio

    from aiohttp import web
    from cosmic_ray import mutating
    from cosmic_ray.distribution.http import handle_mutate_and_test

    mutating.run_tests = run_forked
    # pytest collects garbage at exit; frozen, the preloaded heap is not walked by each fork.
    gc.freeze()

    async def serve() -> None:
        app = web.Application()
        app.add_routes([web.post("/", handle_mutate_and_test)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        listener = socket.create_server(("127.0.0.1", 0))  # bound here: the port is ours, no probing
        await web.SockSite(runner, listener).start()
        print(listener.getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
