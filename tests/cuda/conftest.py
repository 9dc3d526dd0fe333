"""Applies the `cuda` marker to every test in this folder. Where CUDA is absent the layer is
skipped, unless ML_PLAYGROUND_REQUIRE_CUDA=1 (set by `make test-cuda` and tools/gpu_check.sh):
then every test of the layer fails, naming why torch sees no GPU, so a machine whose driver is
broken cannot pass the GPU check with nothing run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.cuda.device import REQUIRE_CUDA, layer_runs

_HERE = Path(__file__).parent


def _why_no_cuda() -> str:
    try:
        torch.cuda.init()  # type: ignore[no-untyped-call]  # torch.cuda.init is unannotated
    except Exception as exc:  # torch says why: no driver, no device, a CPU-only build ...
        return f"{type(exc).__name__}: {exc}"
    return "torch.cuda.is_available() is false"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ours = [item for item in items if item.path.is_relative_to(_HERE)]
    skip = not layer_runs()
    reason = f"needs a CUDA GPU ({_why_no_cuda() if skip and ours else ''}); {REQUIRE_CUDA}=1 makes this a failure"
    for item in ours:
        item.add_marker(pytest.mark.cuda)
        if skip:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def cuda_is_usable() -> None:
    """Reached without CUDA only when it is required (the layer is skipped otherwise)."""
    if not torch.cuda.is_available():
        pytest.fail(f"{REQUIRE_CUDA}=1 but CUDA is not usable here ({_why_no_cuda()})", pytrace=False)
