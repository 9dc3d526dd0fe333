"""Medians after warm-up: of timed calls, of steps between timestamps, and runs that alternate."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

A = TypeVar("A")
B = TypeVar("B")


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


class StepClock:
    """A timestamp at the end of every step, after a device sync; a step's time is the gap
    between its stamp and the previous one (so the first step is never timed)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def stamp(self) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def steps(self, warmup: int) -> Timing:
        """The gaps between stamps, the first `warmup` left out."""
        gaps = [b - a for a, b in itertools.pairwise(self.stamps)]
        return Timing(samples=tuple(gaps[warmup:]))


def alternate(first: Callable[[], A], second: Callable[[], B] | None, runs: int) -> tuple[list[A], list[B]]:
    """`runs` calls of each, in the order first, second, second, first, first, second, ...: a
    steady drift of the machine's speed hits both sides alike. Without `second`, `first` alone."""
    firsts: list[A] = []
    seconds: list[B] = []
    for run in range(runs):
        if run % 2 == 0:
            firsts.append(first())
        if second is not None:
            seconds.append(second())
        if run % 2 == 1:
            firsts.append(first())
    return firsts, seconds
