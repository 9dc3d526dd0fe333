"""A pytest plugin: the run fails when a process the tests started outlives them.

At configure time the pytest process becomes a child subreaper (Linux), so a process orphaned
by a test (a server whose launcher was killed, a daemon that double-forked) is re-parented to
pytest instead of init and stays its descendant. At the end of the session every descendant
still alive after a short grace is listed, killed, and the exit status becomes "tests failed".
tests/conftest.py loads it for the suite (`-p tests.support.process_guard` loads it elsewhere).
"""

from __future__ import annotations

import ctypes
import os
import platform

import psutil
import pytest

_PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 5.0  # for processes already told to stop (a server's shutdown, a pool's exit)


def pytest_configure(config: pytest.Config) -> None:
    if platform.system() == "Linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _alive_descendants() -> list[psutil.Process]:
    alive: list[psutil.Process] = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


def _reap_zombies() -> None:
    """Collect exited orphans (the subreaper is now their parent)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {process.pid}"


def _stop_compile_workers() -> None:
    """torch.compile's worker pool lives until interpreter exit by design; it is not a leak."""
    import sys

    if "torch._inductor.async_compile" in sys.modules:
        from torch._inductor.async_compile import shutdown_compile_workers

        shutdown_compile_workers()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput") and session.config.pluginmanager.hasplugin("dsession"):
        return  # xdist's controller: each worker checks its own tests' processes
    _stop_compile_workers()
    _reap_zombies()
    _, left = psutil.wait_procs(_alive_descendants(), timeout=GRACE_SECONDS)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"processes started by the tests are still running: {len(left)}", *map(_describe, left)]
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=GRACE_SECONDS)
    _reap_zombies()
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
