"""A pytest plugin: the run fails when a process the tests started outlives them.

At configure time the pytest process becomes a child subreaper (Linux), so a process orphaned
by a test (a server whose launcher was killed, a daemon that double-forked) is re-parented to
pytest instead of init and stays its descendant. At the end of the session every descendant
still alive after a short grace is listed, killed, and the exit status becomes "tests failed".
Under pytest-xdist each worker checks the processes its own tests started and sends what it found
to the controller, which lists them and fails the run (a worker's exit status alone would not).
tests/conftest.py loads it for the suite (`-p tests.support.process_guard` loads it elsewhere).
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any, Protocol

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


def _stop_resource_tracker() -> None:
    """multiprocessing's resource tracker (started by the first spawned pool, e.g. a preparation's
    workers) lives until interpreter exit by design; it is not a leak."""
    from multiprocessing import resource_tracker

    tracker: Any = resource_tracker._resource_tracker  # pyright: ignore[reportPrivateUsage]  # no public handle
    tracker._stop()  # a private method: no public way to stop it


def _stop_leftovers() -> list[str]:
    """Kill the descendants still alive after the grace; what they were, one line each."""
    _stop_compile_workers()
    _stop_resource_tracker()
    _reap_zombies()
    _, left = psutil.wait_procs(_alive_descendants(), timeout=GRACE_SECONDS)
    if not left:
        return []
    lines = list(map(_describe, left))
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=GRACE_SECONDS)
    _reap_zombies()
    return lines


class _Worker(Protocol):
    """What the controller sees of a pytest-xdist worker (xdist's WorkerController)."""

    config: pytest.Config
    workeroutput: dict[str, Any]


_WORKER_LINES = "process_guard_leftovers"  # key of a worker's output to the controller
_reported = pytest.StashKey[list[str]]()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: _Worker, error: object | None) -> None:
    """xdist's controller, as a worker ends: keep what its check found."""
    found: list[str] = node.workeroutput.get(_WORKER_LINES, [])
    node.config.stash.setdefault(_reported, []).extend(found)


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and config.pluginmanager.hasplugin("dsession")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if _is_xdist_controller(config):
        lines = config.stash.get(_reported, list[str]())  # each worker checked its own tests' processes
    else:
        lines = _stop_leftovers()
        workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reports and fails the run
            workeroutput[_WORKER_LINES] = lines
            return
    if not lines:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for line in [f"processes started by the tests are still running: {len(lines)}", *lines]:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
