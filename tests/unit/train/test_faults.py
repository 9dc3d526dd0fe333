"""Faults lose nothing: a non-finite step stops the run before any checkpoint holds it, and a
second run cannot write into an out_dir a run holds."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.errors import OutDirBusyError, TrainingDivergedError
from ml_playground.train import loop as loop_module
from ml_playground.train.checkpoint import copy_checkpoint, load_checkpoint
from ml_playground.train.faults import NonFiniteGuard
from ml_playground.train.lock import out_dir_lock
from ml_playground.train.loop import train
from tests.support.fault_targets import FaultMode
from tests.support.tiny_training import read_scalars, tiny_train_table, train_config, write_char_dataset


@pytest.fixture
def table(tmp_path: Path) -> dict[str, Any]:
    write_char_dataset(tmp_path / "ds")
    table = tiny_train_table(tmp_path / "ds", tmp_path / "out")
    table["runtime"] |= {"max_iters": 12, "eval_interval": 4}
    return table


def _finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_checkpoint(path).model.values())


@pytest.mark.parametrize(("fault", "log_interval"), [("nan", 1), ("nan", 100), ("inf_grad", 100)])
def test_a_non_finite_step_stops_the_run_before_any_checkpoint_holds_it(
    table: dict[str, Any], fault: str, log_interval: int
) -> None:
    """Step 5 goes bad; with log_interval 100 it is read only at the eval of step 8, which must
    then neither evaluate nor save: the checkpoints keep step 4."""
    table["runtime"] |= {"log_interval": log_interval}
    cfg = train_config(table)
    with pytest.raises(TrainingDivergedError, match=r"training diverged at iter 5: loss (nan|[0-9.]+), lr [0-9.]+"):
        train(cfg, FaultMode(5, fault))
    out = cfg.runtime.out_dir
    assert load_checkpoint(out / "ckpt_last.pt").iter_num == 4
    assert load_checkpoint(out / "ckpt_best.pt").iter_num <= 4
    assert _finite(out / "ckpt_last.pt")
    assert _finite(out / "ckpt_best.pt")
    logged = read_scalars(out / "logs" / "tb")
    assert [step for step, _ in logged["val/loss"]] == [4]  # no evaluation of the bad weights
    if fault == "nan" and log_interval == 1:
        assert [step for step, _ in logged["train/loss"]] == [0, 1, 2, 3, 4]  # stopped at the bad step's log
        assert all(math.isfinite(value) for _, value in logged["train/loss"])


def test_a_finite_run_is_not_stopped(table: dict[str, Any]) -> None:
    result = train(train_config(table), FaultMode(10**6, "nan"))
    assert result.iter_num == 12


def test_the_guard_keeps_the_first_bad_step() -> None:
    guard = NonFiniteGuard(torch.device("cpu"))
    guard.record(0, torch.tensor(2.0), torch.tensor(1.0), 0.1)
    assert int(guard.step) == guard.never
    guard.record(1, torch.tensor(2.0), torch.tensor(float("inf")), 0.2)
    guard.record(2, torch.tensor(float("nan")), None, 0.3)
    assert int(guard.step) == 1
    assert (float(guard.loss), float(guard.lr)) == (2.0, 0.2)
    assert "training diverged at iter 1: loss 2, lr 0.2" in str(guard.error(1, "ckpt_last.pt"))


def test_a_second_run_on_a_held_out_dir_fails_at_once_naming_the_holder(table: dict[str, Any]) -> None:
    cfg = train_config(table)
    out = cfg.runtime.out_dir
    out.mkdir(parents=True)
    busy = rf"{out} is in use by a training run \(pid {os.getpid()}\)"
    with out_dir_lock(out), pytest.raises(OutDirBusyError, match=busy):
        train(cfg)
    assert not (out / "ckpt_last.pt").exists()  # the refused run wrote nothing
    assert train(cfg).iter_num == 12  # released with its holder


def test_a_killed_holder_leaves_no_stale_lock(table: dict[str, Any]) -> None:
    cfg = train_config(table)
    out = cfg.runtime.out_dir
    out.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib\n"
            "from ml_playground.train.lock import out_dir_lock\n"
            "with out_dir_lock(pathlib.Path(sys.argv[1])):\n"
            "    print('held', flush=True)\n"
            "    sys.stdin.read()\n",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutDirBusyError, match=rf"pid {holder.pid}\)"):
            train(cfg)
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    assert train(cfg).iter_num == 12


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_a_fresh_run_keeps_an_earlier_runs_best_model(table: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Starting fresh (ckpt_last.pt deleted, as the README says) never replaces a trained
    ckpt_best.pt: it is kept under a dated name, and the new run's best is its own."""
    cfg = train_config(table)
    out = cfg.runtime.out_dir
    train(cfg)
    trained = _bytes(out / "ckpt_best.pt")
    (out / "ckpt_last.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="ml_playground.train.loop"):
        train(cfg)
    kept = sorted(out.glob("ckpt_best.*.pt"))
    assert len(kept) == 1
    assert _bytes(kept[0]) == trained
    assert f"the earlier run's ckpt_best.pt is kept as {kept[0].name}" in caplog.text
    # The new run's own file (a new inode), not the kept one linked or copied back.
    assert (out / "ckpt_best.pt").stat().st_ino != kept[0].stat().st_ino
    assert load_checkpoint(out / "ckpt_best.pt").best_val_loss == load_checkpoint(out / "ckpt_last.pt").best_val_loss
    (out / "ckpt_last.pt").unlink()
    train(cfg)  # a second fresh start keeps both earlier models
    assert len(list(out.glob("ckpt_best.*.pt"))) == 2


def test_a_kill_between_the_two_writes_of_a_save_loses_no_best_model(
    table: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ckpt_best.pt is written before ckpt_last.pt: a save cut short after the first write leaves
    ckpt_last.pt one evaluation behind (the resume repeats it), never a best loss without its model."""
    cfg = train_config(table)
    out = cfg.runtime.out_dir
    train(cfg)  # evaluations at 4, 8, 12
    saves: list[int] = []

    def dies_at_the_second_write(source: Path, path: Path) -> None:
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the process ends here, between ckpt_best.pt and ckpt_last.pt
        copy_checkpoint(source, path)

    monkeypatch.setattr(loop_module, "copy_checkpoint", dies_at_the_second_write)
    table["runtime"] |= {"max_iters": 24, "always_save_checkpoint": True}
    with pytest.raises(KeyboardInterrupt):
        train(train_config(table))
    best, last = load_checkpoint(out / "ckpt_best.pt"), load_checkpoint(out / "ckpt_last.pt")
    assert (last.iter_num, best.iter_num) == (16, 20)  # ckpt_last.pt behind, never ahead
    monkeypatch.undo()
    assert train(train_config(table)).iter_num == 24


def test_a_resume_restores_a_best_model_an_older_version_left_behind(
    table: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """ckpt_last.pt records a better val loss than ckpt_best.pt holds (older versions wrote
    ckpt_last.pt first, and a kill came between): the resume makes ckpt_best.pt its model again."""
    cfg = train_config(table)
    out = cfg.runtime.out_dir
    train(cfg)
    last = load_checkpoint(out / "ckpt_last.pt")
    behind = torch.load(out / "ckpt_best.pt", weights_only=True)  # the state such a kill left:
    behind["best_val_loss"] = last.best_val_loss + 1.0  # an older best, with its own (other) weights
    behind["model"] = {name: torch.zeros_like(t) for name, t in behind["model"].items()}
    (out / "ckpt_best.pt").unlink()  # a hard link to ckpt_last.pt: replace, do not write through it
    torch.save(behind, out / "ckpt_best.pt")
    table["runtime"] |= {"max_iters": 13}
    with caplog.at_level(logging.WARNING, logger="ml_playground.train.loop"):
        train(train_config(table))
    assert "ckpt_best.pt was behind ckpt_last.pt (a save cut short): restored from it" in caplog.text
    restored = load_checkpoint(out / "ckpt_best.pt")  # ckpt_last.pt's model, or a better one of step 13
    assert restored.iter_num in (12, 13)
    assert restored.best_val_loss <= last.best_val_loss


def test_temporary_files_of_saves_cut_short_are_removed(table: dict[str, Any]) -> None:
    cfg = train_config(table)
    out = cfg.runtime.out_dir
    train(cfg)
    stale = [out / ".ckpt_last.pt.abc123.tmp", out / ".ckpt_best.pt.4242.link"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    table["runtime"] |= {"max_iters": 16}
    train(train_config(table))
    assert not any(path.exists() for path in stale)
