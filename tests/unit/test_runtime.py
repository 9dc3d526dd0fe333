"""Runtime: precision tools per device/dtype (no CUDA-only machinery on MPS or CPU); the CPU allocator setting."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.config import DType
from ml_playground.runtime import Runtime, keep_freed_memory_for_reuse, resolve_runtime, use_tf32_on_cuda
from tests.support.torch_state import TorchState


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


_BLOCK = 128 << 20  # above glibc's largest mmap threshold (32 MiB): mapped and unmapped by default


def _resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _touched_block() -> np.ndarray:
    block = np.empty(_BLOCK, dtype=np.uint8)
    block.fill(1)  # fault every page in
    return block


def _setting(*path: str) -> str:
    """A torch.backends setting by path (torch's stubs declare only some per-backend ones)."""
    value: object = torch.backends
    for name in path:
        value = getattr(value, name)
    return str(value)


def _matmul_precisions() -> tuple[str, str, str]:
    """float32 precision of cuBLAS matmuls, oneDNN (CPU) matmuls and the generic default."""
    return (
        _setting("cuda", "matmul", "fp32_precision"),
        _setting("mkldnn", "matmul", "fp32_precision"),
        _setting("fp32_precision"),
    )


def _select_nothing(_index: int) -> None:
    return None


def test_tf32_is_set_for_cuda_runtimes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _matmul_precisions()
    assert before[0] != "tf32"
    resolve_runtime("cpu", "float32")
    resolve_runtime("cpu", "bfloat16")
    assert _matmul_precisions() == before  # CPU runs keep full float32 everywhere
    # A CUDA machine as resolve_runtime sees it (the setting is a flag; no GPU needed to set it).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", _select_nothing)
    runtime = resolve_runtime("cuda", "float32")
    assert runtime.device == torch.device("cuda", 0)
    cuda, mkldnn, generic = _matmul_precisions()
    assert cuda == "tf32"
    assert (mkldnn, generic) == before[1:]  # CPU (oneDNN) matmuls and the generic default unchanged
    # Both APIs read the setting back: code that still asks the legacy getters (parts of inductor,
    # other libraries) neither raises nor sees full float32.
    assert torch.backends.cuda.matmul.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"


def test_a_cuda_runtime_turns_tf32_on_for_the_whole_process() -> None:
    """resolve_runtime("cuda") calls use_tf32_on_cuda: a process-wide flag, left on (the next
    test proves it is back off for it)."""
    use_tf32_on_cuda()
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True)
    assert torch.backends.cuda.matmul.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"


def test_the_next_test_finds_torch_as_a_fresh_process_has_it() -> None:
    """tests/conftest.py restores torch's settings after every test, so the layers pass in any order."""
    assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.get_default_dtype() == torch.float32
    assert not torch.are_deterministic_algorithms_enabled()


def test_torch_state_restores_every_setting_it_reads() -> None:
    before = TorchState.now()
    use_tf32_on_cuda()
    torch.backends.cudnn.allow_tf32 = not before.cudnn_tf32
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = not before.cudnn_deterministic
    torch.backends.cudnn.benchmark = not before.cudnn_benchmark
    torch.set_num_threads(before.threads + 1)
    torch.set_grad_enabled(False)
    changed = TorchState.now()
    assert [f.name for f in fields(TorchState) if getattr(changed, f.name) == getattr(before, f.name)] == []
    before.restore()
    assert TorchState.now() == before


def resident_after_free_and_reuse() -> tuple[bool, int, int, int]:
    """In this process: (setting applied, resident bytes with a touched block, after freeing it,
    after touching a block of the same size again)."""
    applied = keep_freed_memory_for_reuse()
    block = _touched_block()
    with_block = _resident_bytes()
    del block
    after_free = _resident_bytes()
    again = _touched_block()
    after_reuse = _resident_bytes()
    del again
    return applied, with_block, after_free, after_reuse


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc allocator setting")
def test_freed_large_blocks_stay_resident_for_the_next_step() -> None:
    # In a fresh process's main thread, as training runs: a pytest-xdist worker runs tests in
    # another thread, whose malloc arena cannot hold a 128 MiB block and maps it whatever the setting.
    code = "import json; from tests.unit.test_runtime import resident_after_free_and_reuse as r; print(json.dumps(r()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    applied, with_block, after_free, after_reuse = json.loads(out.stdout)
    assert applied
    # By default glibc would unmap the 128 MiB on free; now it stays, ready for reuse ...
    assert after_free > with_block - _BLOCK // 2
    # ... and the next block of that size reuses it instead of growing the process.
    assert after_reuse < with_block + _BLOCK // 2
