"""The benchmark's pieces that do not time anything: options, report, synthetic corpus, timing helpers,
nanoGPT loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ml_playground.bench.nanogpt import load_nanogpt
from ml_playground.bench.prepare_cases import write_synthetic_corpus
from ml_playground.bench.report import EvalPoint, Quality, Row, format_table, write_report
from ml_playground.bench.runner import parse_options
from ml_playground.bench.timing import StepClock, alternate, time_calls
from ml_playground.errors import ConfigError
from ml_playground.train.metrics import ThroughputClock


def test_cases_option_parses_and_rejects_unknown_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_options(["--cases", "4,1,4"]).cases == (1, 4)
    with pytest.raises(SystemExit):
        parse_options(["--cases", "1,11"])
    assert "cases must be among" in capsys.readouterr().err


def test_gpu_cases_run_by_default_only_on_cuda_or_in_a_smoke_run() -> None:
    assert parse_options([]).cases == (1, 2, 3, 4, 5, 8, 9, 10)
    assert parse_options(["--device", "cuda"]).cases == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    assert parse_options(["--tiny"]).cases == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    assert parse_options(["--cases", "6"]).cases == (6,)


def test_report_is_valid_json_with_non_finite_values_as_null(tmp_path: Path) -> None:
    path = write_report(tmp_path, {"rows": [{"metrics": {"mfu": math.inf, "ok": 1.5}}], "peak": math.nan})
    data = json.loads(path.read_text())
    assert data == {"rows": [{"metrics": {"mfu": None, "ok": 1.5}}], "peak": None}
    assert (tmp_path / "latest.json").read_text() == path.read_text()


def test_row_json_has_every_metric_field_typed_values_and_none_as_null(tmp_path: Path) -> None:
    metrics = Quality(
        threshold=1.88,
        seconds_to_threshold=None,
        iter_at_threshold=None,
        final_val_loss=math.inf,
        iters=6,
        total_seconds=1.5,
        runs=2,
        seconds_per_run=(1.0, 2.0),
        curves=(
            (EvalPoint(seconds=0.5, iter=0, val_loss=4.2, val_bpb=6.0), EvalPoint(seconds=1.5, iter=6, val_loss=3.1)),
            (),
        ),
    )
    rows = [Row(case="3", variant="ours", summary="s", metrics=metrics), Row(case="1", variant="a", summary="x")]
    data = json.loads(write_report(tmp_path, {"rows": rows}).read_text())
    assert [data["rows"][0][key] for key in ("case", "variant", "summary")] == ["3", "ours", "s"]
    assert data["rows"][0]["metrics"]["seconds_per_run"] == [1.0, 2.0]
    assert data["rows"][0]["metrics"]["vs_nanogpt"] is None
    assert data["rows"][0]["metrics"]["final_val_loss"] is None  # inf has no JSON
    assert data["rows"][0]["metrics"]["seconds_to_threshold"] is None
    assert data["rows"][0]["metrics"]["curves"] == [
        [
            {"seconds": 0.5, "iter": 0, "val_loss": 4.2, "val_bpb": 6.0},
            {"seconds": 1.5, "iter": 6, "val_loss": 3.1, "val_bpb": None},
        ],
        [],
    ]
    assert data["rows"][1]["metrics"] is None


def test_table_has_one_line_per_row_and_aligned_columns() -> None:
    rows = [Row(case="1 train", variant="a", summary="x"), Row(case="2", variant="longer variant", summary="y")]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[2].index("x") == lines[3].index("y")


def test_synthetic_corpus_has_the_requested_size_and_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    assert write_synthetic_corpus(first, 0.3) == 300_000
    write_synthetic_corpus(second, 0.3)
    assert first.stat().st_size == 300_000
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes().isascii()


def test_time_calls_counts_only_timed_repetitions() -> None:
    import torch

    calls: list[int] = []
    seconds = time_calls(lambda: calls.append(1), warmup=2, reps=3, device=torch.device("cpu"))
    assert len(calls) == 5
    assert len(seconds) == 3
    assert min(seconds) >= 0


def test_step_clock_times_the_gaps_between_stamps_after_warmup() -> None:
    import torch

    clock = StepClock(torch.device("cpu"))
    for _ in range(5):
        clock.stamp()
    assert len(clock.steps(warmup=0)) == 4  # the first stamp has nothing before it
    assert len(clock.steps(warmup=1)) == 3
    assert all(gap >= 0 for gap in clock.steps(warmup=0))


def test_windowed_step_clock_syncs_at_window_ends_and_reports_seconds_per_step() -> None:
    import torch

    now = iter(float(t) for t in range(100))
    synced: list[int] = []
    steps = StepClock(
        torch.device("cpu"), every=4, clock=ThroughputClock(lambda: synced.append(steps.calls), lambda: next(now))
    )
    for _ in range(13):  # stamps after steps 1, 5, 9, 13: three windows of four steps
        steps.stamp()
    assert synced == [1, 5, 9, 13]
    assert steps.steps(warmup=0) == (0.25, 0.25, 0.25)  # one second per window of four
    assert len(steps.steps(warmup=4)) == 2
    assert len(steps.steps(warmup=5)) == 1  # a window that starts within the warm-up goes
    with pytest.raises(ValueError, match="every"):
        StepClock(torch.device("cpu"), every=0)


def test_alternate_runs_abba_so_drift_hits_both_sides() -> None:
    order: list[str] = []

    def side(name: str) -> str:
        order.append(name)
        return name

    firsts, seconds = alternate(lambda: side("a"), lambda: side("b"), 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert (firsts, seconds) == (["a"] * 3, ["b"] * 3)
    order.clear()
    alone: tuple[list[str], list[str]] = alternate(lambda: side("a"), None, 2)
    assert order == ["a", "a"]
    assert alone == (["a", "a"], [])


def test_nanogpt_dir_without_model_py_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.py not found"):
        load_nanogpt(tmp_path)
