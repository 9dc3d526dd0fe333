from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from ml_playground.config import GPTConfig
from ml_playground.model import GPT
from ml_playground.train import metrics
from ml_playground.train.metrics import (
    MetricsSink,
    PrecisionProbe,
    StepStats,
    ThroughputClock,
    Window,
    flops_per_token,
    machine_key,
    measure_peak_flops,
    peak_cache_file,
    peak_flops,
    probe_bfloat16,
    read_scalars,
    warn_if_bfloat16_slower,
)


def test_flops_per_token_is_palms_formula() -> None:
    model = GPT(GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=4, n_embd=32))
    # 6N + 12·L·H·Q·T, N without the position embeddings
    assert flops_per_token(model, 16) == 6 * model.num_params() + 12 * 2 * 4 * 8 * 16
    assert model.num_params() == sum(p.numel() for p in model.parameters()) - 16 * 32


def test_mfu_is_achieved_over_peak_of_the_window() -> None:
    window = Window(steps=4, tokens=4000, seconds=2.0)
    stats = StepStats(iter_num=0, loss=1.0, lr=1e-3, window=window, flops_per_token=1e6, peak_flops=1e10)
    assert stats.tokens_per_sec == 2000
    assert stats.step_seconds == 0.5  # the mean per optimizer step, not the window
    assert stats.mfu == pytest.approx(2000 * 1e6 / 1e10)


def test_peak_probe_measures_without_touching_the_global_rng() -> None:
    torch.manual_seed(5)
    before = torch.get_rng_state()
    peak = measure_peak_flops(torch.device("cpu"), torch.float32, repeats=1)
    assert peak > 1e6
    assert torch.equal(torch.get_rng_state(), before)


def _probes(monkeypatch: pytest.MonkeyPatch, peaks: list[float]) -> list[float]:
    """The peak probe returns `peaks` in turn; returns the list of what it returned."""
    returned: list[float] = []

    def probe(device: torch.device, dtype: torch.dtype) -> float:
        returned.append(peaks[len(returned)])
        return returned[-1]

    monkeypatch.setattr(metrics, "measure_peak_flops", probe)
    return returned


def test_the_peak_is_measured_once_per_machine_and_the_larger_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" / "peak_flops.json"
    cpu = torch.device("cpu")
    probes = _probes(monkeypatch, [2e9, 5e9, 1e9, 3e9])
    assert peak_flops(cpu, torch.float32, cache) == 2e9  # measured, and kept
    assert peak_flops(cpu, torch.float32, cache) == 2e9  # read back
    assert probes == [2e9]
    assert peak_flops(cpu, torch.bfloat16, cache) == 5e9  # another dtype: measured
    assert peak_flops(cpu, torch.float32, cache, again=True) == 2e9  # a slower probe does not lower it
    assert peak_flops(cpu, torch.float32, cache, again=True) == 3e9  # a faster one raises it
    assert json.loads(cache.read_text()) == {
        machine_key(cpu, torch.float32): 3e9,
        machine_key(cpu, torch.bfloat16): 5e9,
    }
    assert probes == [2e9, 5e9, 1e9, 3e9]


def test_the_machine_key_changes_with_the_torch_build_threads_and_dtype() -> None:
    cpu = torch.device("cpu")
    key = machine_key(cpu, torch.float32)
    assert torch.__version__ in key
    assert key != machine_key(cpu, torch.bfloat16)
    torch.set_num_threads(torch.get_num_threads() + 1)  # restored after the test (tests/conftest.py)
    assert key != machine_key(cpu, torch.float32)


def test_a_cache_that_is_not_ours_is_measured_again_and_one_that_cannot_be_written_is_logged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cpu = torch.device("cpu")
    _probes(monkeypatch, [2e9, 4e9])
    cache = tmp_path / "peak_flops.json"
    cache.write_text('{"a key": "not a number"')
    assert peak_flops(cpu, torch.float32, cache) == 2e9
    assert json.loads(cache.read_text()) == {machine_key(cpu, torch.float32): 2e9}
    blocked = tmp_path / "a file" / "peak_flops.json"
    blocked.parent.write_text("in the way")
    with caplog.at_level(logging.WARNING, logger="ml_playground.train.metrics"):
        assert peak_flops(cpu, torch.float32, blocked) == 4e9
    assert [r.getMessage() for r in caplog.records] == [
        f"{blocked}: cannot keep the measured peak ({blocked.parent} is a file, not a folder); "
        "the next run measures it again"
    ]


def test_the_peak_cache_is_in_the_user_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ML_PLAYGROUND_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert peak_cache_file() == tmp_path / "ml-playground" / "peak_flops.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert peak_cache_file() == tmp_path / "home" / ".cache" / "ml-playground" / "peak_flops.json"
    monkeypatch.setenv("ML_PLAYGROUND_CACHE", str(tmp_path / "own"))
    assert peak_cache_file() == tmp_path / "own" / "peak_flops.json"


class FakeDevice:
    """A timer the test moves by hand and a sync probe; both record into one event list."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events: list[str] = []

    def timer(self) -> float:
        self.events.append("time")
        return self.now

    def sync(self) -> None:
        self.events.append("sync")

    def clock(self) -> ThroughputClock:
        return ThroughputClock(self.sync, self.timer)


def _step(device: FakeDevice, clock: ThroughputClock, seconds: float, tokens: int = 100) -> None:
    """One training step as the loop runs it: start (a no-op while running), the work, count."""
    clock.start()
    device.now += seconds
    clock.count(tokens)


def test_windows_tile_training_time_and_leave_out_evaluation() -> None:
    device = FakeDevice()
    clock = device.clock()
    device.now = 10.0  # set-up and the peak probe: before the first start
    clock.pause()  # the loop pauses before every evaluation
    device.now += 5.0  # the evaluation at step 0
    _step(device, clock, 2.0)
    first = clock.lap()
    device.now += 0.5  # logging: part of the next window
    _step(device, clock, 2.0)
    _step(device, clock, 2.0)
    clock.pause()
    device.now += 30.0  # evaluation and checkpoint
    _step(device, clock, 2.0)
    second = clock.lap()
    assert first == Window(steps=1, tokens=100, seconds=2.0)
    assert second == Window(steps=3, tokens=300, seconds=6.5)
    # The windows tile the run's time except set-up and evaluations.
    assert first.seconds + second.seconds == device.now - 10.0 - 5.0 - 30.0


def test_every_mark_syncs_the_device_before_reading_the_time() -> None:
    device = FakeDevice()
    clock = device.clock()
    clock.start()
    assert device.events == ["sync", "time"]
    clock.start()  # running: no sync, no time read (steps inside a window never wait)
    clock.count(1)
    assert device.events == ["sync", "time"]
    clock.lap()
    clock.pause()
    assert device.events == ["sync", "time"] * 3
    clock.pause()  # already paused: nothing
    assert device.events == ["sync", "time"] * 3
    device.now += 7.0  # paused: this time is in no window
    assert clock.lap().seconds == 0.0


def test_log_interval_one_reports_each_step_with_its_logging_in_the_next() -> None:
    device = FakeDevice()
    clock = device.clock()
    windows: list[Window] = []
    for seconds in (1.0, 2.0, 3.0):
        _step(device, clock, seconds)
        windows.append(clock.lap())
        device.now += 0.25  # logging and the step callback
    assert windows == [
        Window(steps=1, tokens=100, seconds=1.0),
        Window(steps=1, tokens=100, seconds=2.25),
        Window(steps=1, tokens=100, seconds=3.25),
    ]


def test_a_resumed_run_starts_its_first_window_at_its_first_step() -> None:
    device = FakeDevice()
    device.now = 100.0  # the checkpoint loaded, the process started long ago
    clock = device.clock()  # a resumed run's clock: paused until its first step
    device.now += 7.0
    _step(device, clock, 1.5, tokens=64)
    _step(device, clock, 1.5, tokens=64)
    assert clock.lap() == Window(steps=2, tokens=128, seconds=3.0)


def test_a_window_counts_the_tokens_it_is_given() -> None:
    device = FakeDevice()
    clock = device.clock()
    tokens_per_step = 4 * 16 * 3 * 2  # batch x block x grad_accum x world_size: what the loop counts
    for _ in range(5):
        _step(device, clock, 1.0, tokens=tokens_per_step)
    window = clock.lap()
    assert window.tokens == 5 * tokens_per_step
    assert window.tokens_per_sec == tokens_per_step
    assert window.step_seconds == 1.0


def test_bfloat16_warning_fires_only_when_bfloat16_is_slower(caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="ml_playground.train.metrics"):
        assert not warn_if_bfloat16_slower(PrecisionProbe(float32_seconds=0.004, bfloat16_seconds=0.002), cpu)
        assert not caplog.records
        slower = PrecisionProbe(float32_seconds=0.002, bfloat16_seconds=0.080)
        assert warn_if_bfloat16_slower(slower, cpu)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "80.00 ms vs 2.00 ms" in message
    assert 'train.runtime.dtype = "float32"' in message
    assert slower.bfloat16_slower


def test_bfloat16_probe_times_both_paths_without_touching_the_global_rng() -> None:
    torch.manual_seed(5)
    before = torch.get_rng_state()
    probe = probe_bfloat16(torch.device("cpu"), tokens=16, width=8, min_rounds=1, budget_s=0.0)
    assert probe.float32_seconds > 0
    assert probe.bfloat16_seconds > 0
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.is_autocast_enabled("cpu")


def test_no_mfu_is_reported_above_the_peak(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """A peak probe that ran slow (a busy machine) would put MFU above 100%: none is reported."""
    window = Window(steps=1, tokens=1000, seconds=1.0)
    slow_probe = StepStats(iter_num=3, loss=1.0, lr=1e-3, window=window, flops_per_token=1e6, peak_flops=1e8)
    assert slow_probe.mfu == pytest.approx(10.0)
    assert not slow_probe.mfu_known
    sink = MetricsSink(tmp_path)
    with caplog.at_level(logging.INFO, logger="ml_playground.train.metrics"):
        sink.log_step(slow_probe)
    sink.close()
    assert "mfu n/a" in caplog.text
    assert "train/mfu" not in read_scalars(tmp_path / "logs" / "tb")
