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
    """A timestamp after a device sync at the end of every `every`-th step; a step's time is the
    gap between two stamps over the steps between them (so the first step is never timed).

    every=1 times single steps (CPU: medians of steps); on a GPU a sync per step would keep the
    host from queueing the next step while the device runs this one, which no trainer does, so
    GPU cases stamp windows of several steps."""

    def __init__(self, device: torch.device, *, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.device = device
        self.every = every
        self.calls = 0
        self.stamps: list[float] = []

    def plan(self, warmup: int, reps: int) -> tuple[int, int]:
        """(warm-up steps, all steps) for `reps` timed steps after `warmup`, each rounded up to whole
        windows, and the first step, which has no stamp before it."""
        warm = -(-warmup // self.every) * self.every
        return warm, warm + -(-reps // self.every) * self.every + 1

    def stamp(self) -> None:
        self.calls += 1
        if (self.calls - 1) % self.every == 0:
            synchronize(self.device)
            self.stamps.append(time.perf_counter())

    def stamped_steps(self) -> dict[int, float]:
        """Step index (0: the first step) -> the time its end was stamped."""
        return {i * self.every: stamp for i, stamp in enumerate(self.stamps)}

    def steps(self, warmup: int) -> Timing:
        """Mean seconds per step of each window between stamps; windows that start within the
        first `warmup` steps after the first stamp are left out."""
        gaps = [(b - a) / self.every for a, b in itertools.pairwise(self.stamps)]
        skip = -(-warmup // self.every)
        return Timing(samples=tuple(gaps[skip:]))


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
