"""Timed calls, steps (or windows of steps) between stamps, and runs that alternate two sides; every
clock is the trainer's own `ThroughputClock` (the device synchronised at each mark)."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ml_playground.errors import DataError
from ml_playground.train.metrics import ThroughputClock

A = TypeVar("A")
B = TypeVar("B")


def time_calls(fn: Callable[[], object], *, warmup: int, reps: int, device: torch.device) -> tuple[float, ...]:
    """Seconds of each of `reps` calls of `fn` after `warmup` untimed ones, each ending with a device sync."""
    for _ in range(warmup):
        fn()
    clock = ThroughputClock.for_device(device)
    clock.start()
    samples: list[float] = []
    for _ in range(reps):
        fn()
        samples.append(clock.lap().seconds)
    return tuple(samples)


class StepClock:
    """A stamp (a lap of `clock`) at the end of every `every`-th step; a step's time is the gap between
    two stamps over the steps between them (the first step is never timed). On a GPU a sync per step
    would keep the host from queueing the next step, which no trainer does: GPU cases stamp windows."""

    def __init__(self, device: torch.device, *, every: int = 1, clock: ThroughputClock | None = None) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.calls = 0
        self.stamps: list[float] = []  # seconds since the first stamp, at the end of steps 0, every, 2 every, ...
        self.clock = ThroughputClock.for_device(device) if clock is None else clock

    def plan(self, warmup: int, reps: int) -> tuple[int, int]:
        """(warm-up steps, all steps) for `reps` timed steps after `warmup`, each rounded up to whole
        windows, and the first step, which has no stamp before it."""
        warm = -(-warmup // self.every) * self.every
        return warm, warm + -(-reps // self.every) * self.every + 1

    def stamp(self) -> None:
        self.calls += 1
        if (self.calls - 1) % self.every == 0:
            self.clock.start()  # the first stamp opens the clock; later ones are laps of it
            self.stamps.append(self.stamps[-1] + self.clock.lap().seconds if self.stamps else 0.0)

    def steps(self, warmup: int) -> tuple[float, ...]:
        """Mean seconds per step of each window between stamps; windows that start within the
        first `warmup` steps after the first stamp are left out."""
        gaps = [(b - a) / self.every for a, b in itertools.pairwise(self.stamps)]
        return tuple(gaps[-(-warmup // self.every) :])


def run_process(command: list[str], what: str, cwd: Path | None = None) -> tuple[float, str]:
    """Seconds of a whole child process and its stdout; a failed one stops the bench in one line naming `what`."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise DataError(f"{what} exited {done.returncode}: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return seconds, done.stdout


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
