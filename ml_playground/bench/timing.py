"""Medians after warm-up."""

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
