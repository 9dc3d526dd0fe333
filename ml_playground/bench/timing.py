"""Medians after warm-up, and the machine's matmul peak measured in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """Wall-clock seconds of each timed repetition (warm-up calls excluded)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_calls(fn: Callable[[], object], *, warmup: int, reps: int, device: torch.device) -> Timing:
    """Call `fn` warmup + reps times; the timed calls end with a device sync."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - started)
    return Timing(samples=tuple(samples))


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, *, size: int = 1024, reps: int = 10) -> float:
    """Best FLOP/s of a (size x size) @ (size x size) matmul: the peak a model could reach."""
    a = torch.full((size, size), 0.5, dtype=dtype, device=device)
    b = torch.full((size, size), 0.25, dtype=dtype, device=device)
    timing = time_calls(lambda: torch.mm(a, b), warmup=2, reps=reps, device=device)
    return 2.0 * size**3 / max(min(timing.samples), 1e-9)
