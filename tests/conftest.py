"""For every test: torch's process-wide settings are restored afterwards (support/torch_state.py);
a test that leaves a stop-signal handler of the training loop installed fails (the handler is put
back first, so later tests and a Ctrl-C on pytest still behave); runs (and the processes a test
starts) keep what they cache in a folder of the test's own; and the session fails if a process
the tests started is still alive at its end (support/process_guard.py). A pytest-xdist worker
(`make test` runs one per core) gives torch one intra-op thread, and so the processes its tests
start: the workers already fill the cores."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ml_playground.train.faults import STOP_SIGNALS
from tests.support import process_guard
from tests.support.process_guard import pytest_sessionfinish, pytest_testnodedown
from tests.support.torch_state import TorchState

__all__ = ["pytest_configure", "pytest_sessionfinish", "pytest_testnodedown", "torch_state"]


def pytest_configure(config: pytest.Config) -> None:
    process_guard.pytest_configure(config)
    if hasattr(config, "workerinput"):  # an xdist worker
        # Thread pools that spin on cores another worker uses make tiny models several times slower.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def torch_state() -> Iterator[None]:
    before = TorchState.now()
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    before.restore()
    left = [sig.name for sig, handler in handlers.items() if signal.getsignal(sig) is not handler]
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    if left:
        pytest.fail(f"the test left its own handler for {', '.join(left)} installed", pytrace=False)


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ML_PLAYGROUND_CACHE (measured peaks), never the user's cache folder."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ML_PLAYGROUND_CACHE", str(folder))
    return folder
