from __future__ import annotations

import itertools
import math

import pytest

from ml_playground.config import ScheduleConfig
from ml_playground.train.schedule import learning_rate

SCHEDULE = ScheduleConfig(decay_lr=True, warmup_iters=10, lr_decay_iters=110, min_lr=1e-4)
BASE = 1e-3


def test_warmup_is_linear_and_nonzero_at_step_zero() -> None:
    assert learning_rate(0, BASE, SCHEDULE) == pytest.approx(BASE / 11)
    assert learning_rate(4, BASE, SCHEDULE) == pytest.approx(5 * BASE / 11)
    assert learning_rate(9, BASE, SCHEDULE) == pytest.approx(10 * BASE / 11)


def test_cosine_decay_from_peak_to_min() -> None:
    assert learning_rate(10, BASE, SCHEDULE) == pytest.approx(BASE)
    halfway = 1e-4 + 0.5 * (1 + math.cos(math.pi * 0.5)) * (BASE - 1e-4)
    assert learning_rate(60, BASE, SCHEDULE) == pytest.approx(halfway)
    assert learning_rate(110, BASE, SCHEDULE) == pytest.approx(1e-4)
    assert learning_rate(5000, BASE, SCHEDULE) == pytest.approx(1e-4)
    values = [learning_rate(step, BASE, SCHEDULE) for step in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_constant_when_decay_disabled() -> None:
    constant = ScheduleConfig(decay_lr=False, warmup_iters=10, lr_decay_iters=110, min_lr=1e-4)
    assert {learning_rate(step, BASE, constant) for step in (0, 5, 50, 500)} == {BASE}


def test_no_warmup_starts_at_peak() -> None:
    schedule = ScheduleConfig(decay_lr=True, warmup_iters=0, lr_decay_iters=100, min_lr=0.0)
    assert learning_rate(0, BASE, schedule) == pytest.approx(BASE)
    assert learning_rate(100, BASE, schedule) == 0.0
