"""For every test: torch's process-wide settings are restored afterwards (support/torch_state.py),
and the session fails if a process the tests started is still alive at its end
(support/process_guard.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.process_guard import pytest_configure, pytest_sessionfinish
from tests.support.torch_state import TorchState

__all__ = ["pytest_configure", "pytest_sessionfinish", "torch_state"]


@pytest.fixture(autouse=True)
def torch_state() -> Iterator[None]:
    before = TorchState.now()
    yield
    before.restore()
