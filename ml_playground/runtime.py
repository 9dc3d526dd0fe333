"""Device, dtype/autocast, seeding and RNG state: the runtime facts shared by train and sample."""

from __future__ import annotations

import contextlib
import ctypes
import platform
import random
import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ml_playground.config import Device, DType
from ml_playground.errors import DeviceError, summary

TORCH_DTYPES: dict[DType, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def mps_available() -> bool:
    return bool(torch.backends.mps.is_available())


def usable_devices() -> list[str]:
    devices = ["cpu"]
    if mps_available():
        devices.append("mps")
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


@dataclass(frozen=True, slots=True)
class Runtime:
    """A resolved device and compute dtype."""

    device: torch.device
    dtype: DType

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def uses_grad_scaler(self) -> bool:
        # Loss scaling exists for float16 on CUDA only (never on MPS or CPU).
        return self.dtype == "float16" and self.device_type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward pass; a no-op context in float32."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.torch_dtype)


def use_tf32_on_cuda() -> None:
    """float32 matmuls on CUDA in TF32 (tensor cores: inputs rounded to a 10-bit mantissa, float32
    accumulation), as nanoGPT runs them. Only cuBLAS changes: CPU (oneDNN) matmuls keep full
    float32, and cuDNN convolutions already default to TF32 in torch (the GPT has none). Set with
    nanoGPT's flag: torch keeps it consistent with the per-backend `fp32_precision` (which then
    reads "tf32"), while setting `fp32_precision` itself makes the legacy getters raise, and parts
    of inductor (its bmm templates) and other libraries still read those."""
    torch.backends.cuda.matmul.allow_tf32 = True


def resolve_runtime(device: Device, dtype: DType, local_rank: int | None = None) -> Runtime:
    """Check that the configured device and dtype work here; never fall back silently. On CUDA,
    float32 matmuls use TF32 (`use_tf32_on_cuda`)."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                "device 'cuda' is configured but CUDA is not available; usable: " + ", ".join(usable_devices())
            )
        index = 0 if local_rank is None else local_rank
        if index >= torch.cuda.device_count():
            raise DeviceError(f"cuda:{index} requested but only {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(index)
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise DeviceError("dtype 'bfloat16' is not supported by this GPU; use float16 or float32")
        use_tf32_on_cuda()
        return Runtime(torch.device("cuda", index), dtype)
    if device == "mps":
        if not mps_available():
            raise DeviceError(
                "device 'mps' is configured but MPS is not available; usable: " + ", ".join(usable_devices())
            )
        return Runtime(torch.device("mps"), dtype)
    if dtype == "float16":
        raise DeviceError("dtype 'float16' is not supported on cpu; use bfloat16 or float32")
    return Runtime(torch.device("cpu"), dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG that training draws from, as tensors/plain values (safe for weights_only loads)."""
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):
        raise TypeError("numpy returned a non-legacy RNG state")
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if mps_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and mps_available():
        torch.mps.set_rng_state(state["mps"])


def environment_report() -> str:
    """What `make verify` prints."""
    import tiktoken

    from ml_playground import __version__

    lines = [
        f"ml_playground {__version__}",
        f"python {platform.python_version()} ({platform.machine()})",
        f"torch {torch.__version__}",
        f"numpy {np.__version__}",
        f"tiktoken {tiktoken.__version__}",
        f"devices: {', '.join(usable_devices())}",
    ]
    return "\n".join(lines)


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def keep_freed_memory_for_reuse() -> bool:
    """Linux/glibc: serve every allocation from the heap and keep freed memory for reuse.

    glibc maps blocks above 32 MiB with mmap and unmaps them on free, so a CPU training step
    whose activations are that large (the logits of a GPT-2 vocabulary: batch x block x 50257
    floats) gets fresh zeroed pages, one page fault per 4 KiB, on every step. Measured here for
    4 x 128, batch 16 x 64, vocabulary 50304: 209k page faults and 0.58 s of kernel time per step,
    843 -> 536 ms per step without them. The same math; the process keeps its peak memory instead
    of returning it between steps. Returns whether the setting was applied (False off glibc).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


@contextlib.contextmanager
def memory_for(what: str, device: torch.device) -> Generator[None]:
    """An allocation inside the block that does not fit becomes one DeviceError line naming `what`
    and the size asked for (torch raises OutOfMemoryError on accelerators, RuntimeError on CPUs)."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        text = summary(exc)
        if not isinstance(exc, torch.OutOfMemoryError) and "allocate" not in text:
            raise
        asked = re.search(r"allocate (\d+) bytes", text)
        size = f"{int(asked.group(1)) / 2**30:.1f} GiB asked for" if asked else text
        raise DeviceError(f"{what} does not fit in the memory of {device} ({size}); make it smaller") from None
