"""The throughput a run logs, checked against the wall clock of the same run (never as speed)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from ml_playground.config import GPTConfig
from ml_playground.data.batches import BatchSource
from ml_playground.data.meta import read_meta
from ml_playground.model import GPT
from ml_playground.runtime import Runtime
from ml_playground.train import loop as loop_module
from ml_playground.train.distributed import DistInfo
from ml_playground.train.loop import build_loop, train
from ml_playground.train.metrics import MetricsSink, StepStats, ThroughputClock
from ml_playground.train.parallel import Parallel
from tests.support.tiny_training import TEXT, tiny_train_table, train_config, write_char_dataset

FAR = 1000.0  # seconds a fake clock jumps during work that must stay outside every window


@pytest.fixture
def table(tmp_path: Path) -> dict[str, Any]:
    write_char_dataset(tmp_path / "ds")
    return tiny_train_table(tmp_path / "ds", tmp_path / "out")


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[StepStats]:
    """Every StepStats the run's sink logs (it still writes them)."""
    stats: list[StepStats] = []
    original = MetricsSink.log_step

    def log_step(sink: MetricsSink, step: StepStats) -> None:
        stats.append(step)
        original(sink, step)

    monkeypatch.setattr(MetricsSink, "log_step", log_step)
    return stats


def _sized(table: dict[str, Any], *, steps: int, eval_interval: int, log_interval: int, accum: int) -> None:
    table["data"] = {**table["data"], "grad_accum_steps": accum}
    runtime = {"max_iters": steps, "eval_interval": eval_interval, "log_interval": log_interval}
    table["runtime"] = {**table["runtime"], **runtime}


@pytest.mark.slow
def test_logged_windows_count_every_token_and_lie_between_the_stamps_of_their_steps(
    table: dict[str, Any], logged: list[StepStats]
) -> None:
    """Each window after the first log step holds exactly the steps and tokens since the previous
    one (grad accumulation included), and tokens/s x window seconds is those tokens. Its seconds
    lie between the wall-clock stamps that bracket it: the clock opened after the previous log
    step's stamp of the step before it and before its own stamp, and closed after the stamp of
    the step before the log step and before the log step's own stamp. Ordering only: no load on
    the machine can break these bounds."""
    _sized(table, steps=40, eval_interval=40, log_interval=4, accum=2)
    cfg = train_config(table)
    stamps: dict[int, float] = {}

    def on_step(iter_num: int, loss: Tensor) -> None:
        loss.item()  # waits for the step's work (a no-op wait on CPU)
        stamps[iter_num] = time.perf_counter()

    stamps[-1] = time.perf_counter()  # before the run: earlier than any mark of its clock
    train(cfg, on_step=on_step)
    iters = [stats.iter_num for stats in logged]
    assert iters == list(range(0, 40, 4))
    tokens_per_step = 4 * 16 * 2  # batch x block x grad_accum_steps
    assert (logged[0].window.steps, logged[0].window.tokens) == (1, tokens_per_step)
    for previous, stats in itertools.pairwise(logged):
        assert stats.window.steps == stats.iter_num - previous.iter_num == 4
        assert stats.window.tokens == stats.window.steps * tokens_per_step
        assert stats.tokens_per_sec * stats.window.seconds == pytest.approx(stats.window.tokens, rel=1e-9)
        # No evaluation inside (eval_interval = max_iters): the window is lap to lap.
        shortest = stamps[stats.iter_num - 1] - stamps[previous.iter_num]
        longest = stamps[stats.iter_num] - stamps[previous.iter_num - 1]
        assert shortest < stats.window.seconds < longest


def test_a_step_counts_every_micro_step_of_every_rank(table: dict[str, Any]) -> None:
    table["data"] = {**table["data"], "grad_accum_steps": 3}
    cfg = train_config(table)
    model = GPT(GPTConfig(**table["model"], vocab_size=len(set(TEXT))))
    batches = BatchSource.for_run(cfg, read_meta(cfg.data.meta_path), torch.device("cpu"), rank=1, world_size=2)
    runtime = Runtime(torch.device("cpu"), "float32")
    loop = build_loop(cfg, Parallel(model), batches, runtime, dist=DistInfo(rank=1, world_size=2), dataset_meta=None)
    assert loop.tokens_per_step == 4 * 16 * 3 * 2  # what the loop counts into each window


def _jumps_far(monkeypatch: pytest.MonkeyPatch, name: str, offset: list[float]) -> None:
    """loop.py's `name` moves the fake clock FAR ahead while it runs."""
    original: Callable[..., Any] = getattr(loop_module, name)

    def far(*args: Any, **kwargs: Any) -> Any:
        offset[0] += FAR
        return original(*args, **kwargs)

    monkeypatch.setattr(loop_module, name, far)


def test_evaluation_saving_setup_and_resume_stay_outside_every_window(
    table: dict[str, Any], logged: list[StepStats], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock jumps FAR seconds in the peak probe, every evaluation, every save and the resume:
    no logged window may hold such a jump, and the windows still count every step once."""
    offset = [0.0]

    def offset_clock(device: torch.device) -> ThroughputClock:
        return ThroughputClock(lambda: None, lambda: time.perf_counter() + offset[0])

    monkeypatch.setattr(ThroughputClock, "for_device", staticmethod(offset_clock))
    for name in ("_measured_peak", "evaluate", "maybe_save", "resume"):
        _jumps_far(monkeypatch, name, offset)
    del table["runtime"]["peak_flops"]  # the run probes the peak
    _sized(table, steps=7, eval_interval=3, log_interval=2, accum=1)
    train(train_config(table))
    # Logs at 0, 2, 4, 6; evaluations (each with a save) at 3, 6 and 7 (after the last step):
    # the windows of 4 and 6 span an evaluation.
    assert [(stats.iter_num, stats.window.steps) for stats in logged] == [(0, 1), (2, 2), (4, 2), (6, 2)]
    table["runtime"]["max_iters"] = 11
    train(train_config(table))  # resumes at 7 (its evaluation was before the save)
    # The resumed run's first window starts at its first step, 7: logs at 8 and 10.
    assert [(stats.iter_num, stats.window.steps) for stats in logged[4:]] == [(8, 2), (10, 2)]
    # The jumps happened: 2 probes, 3 + 2 evaluations with as many saves, 1 resume.
    assert offset[0] == 13 * FAR
    assert all(0 < stats.window.seconds < FAR for stats in logged)
