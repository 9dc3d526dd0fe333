"""Runtime: which precision tools each device/dtype gets (no CUDA-only machinery on MPS or CPU)."""

from __future__ import annotations

import pytest
import torch

from ml_playground.config import DType
from ml_playground.runtime import Runtime


@pytest.mark.parametrize("device", ["cpu", "mps", "cuda"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_loss_scaling_only_for_float16_on_cuda(device: str, dtype: DType) -> None:
    # nanoGPT issue #654: a GradScaler enabled on MPS. Ours exists for CUDA float16 only.
    runtime = Runtime(torch.device(device), dtype)
    assert runtime.uses_grad_scaler == (device == "cuda" and dtype == "float16")


def test_float32_runs_without_autocast() -> None:
    a = torch.randn(4, 4)
    with Runtime(torch.device("cpu"), "float32").autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ a).dtype == torch.float32


def test_bfloat16_autocasts_matmuls_on_the_runtime_device() -> None:
    a = torch.randn(4, 4)
    with Runtime(torch.device("cpu"), "bfloat16").autocast():
        assert torch.is_autocast_enabled("cpu")
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32  # only inside the context
