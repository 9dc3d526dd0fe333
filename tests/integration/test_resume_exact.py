"""Exact resume: a training process killed with SIGKILL mid-run and restarted reproduces the
uninterrupted run bit for bit (per-step losses and final weights) on CPU, from one token file per
split or from shards, and the restarted run
marks its TensorBoard events so that what the killed run logged past its checkpoint is purged.

The kill comes from tests/support/kill_switch.py at a fixed point (5 steps past the checkpoint at
iter 20, TensorBoard flushed), so a busy machine cannot let the run finish before it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from ml_playground.train.checkpoint import load_checkpoint
from tests.support.kill_switch import spec, train_cli
from tests.support.tiny_training import read_scalars, tiny_train_table, write_char_dataset
from tests.support.torchrun import write_toml

MAX_ITERS = 30  # checkpoints at 10, 20 and 30; the kill comes at 25
EVAL_INTERVAL = 10
KILL_AFTER_ITER = 20
STEPS_PAST_CHECKPOINT = 5


def _table(dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    table = tiny_train_table(dataset_dir, out_dir)
    table["model"] = {**table["model"], "n_layer": 2, "n_embd": 32, "n_head": 2, "dropout": 0.1}
    table["data"] = {**table["data"], "grad_accum_steps": 2}
    table["schedule"] = {"warmup_iters": 5, "lr_decay_iters": MAX_ITERS, "min_lr": 1e-3}
    table["runtime"] = {**table["runtime"], "max_iters": MAX_ITERS, "eval_interval": EVAL_INTERVAL}
    return table


def _train_losses(out_dir: Path) -> list[tuple[int, float]]:
    return read_scalars(out_dir / "logs" / "tb")["train/loss"]


def _raw_events(logdir: Path) -> list[list[Any]]:
    """Every event of every event file, file by file in the order they were written, exactly as
    stored: nothing dropped or reordered (EventAccumulator purges out-of-order steps by itself)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files: list[list[Any]] = []
    for path in logdir.iterdir():
        files.append(list(cast("Iterator[Any]", EventFileLoader(str(path)).Load())))
    return sorted(files, key=lambda events: float(events[0].wall_time))


def _train_loss_steps(events: list[Any]) -> list[int]:
    return [int(e.step) for e in events if e.HasField("summary") and e.summary.value[0].tag == "train/loss"]


def _session_starts(events: list[Any]) -> list[tuple[int, int]]:
    """(position, step) of every SessionLog START event: TensorBoard purges events of earlier
    files at or past that step."""
    return [
        (i, int(e.step))
        for i, e in enumerate(events)
        if e.HasField("session_log") and e.session_log.status == e.session_log.START
    ]


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    """The killed and resumed run reads the same tokens as 3 shards per split: reading across
    shards and resuming there are both checked against the one-file reference."""
    write_char_dataset(tmp_path / "ds")
    write_char_dataset(tmp_path / "sharded", shards=3)
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    train_cli(write_toml(tmp_path / "reference.toml", {"train": _table(tmp_path / "ds", reference_dir)}))

    config = write_toml(tmp_path / "resumed.toml", {"train": _table(tmp_path / "sharded", resumed_dir)})
    kill = spec(rank=0, after_iter=KILL_AFTER_ITER, steps=STEPS_PAST_CHECKPOINT, marker=tmp_path / "killed")
    train_cli(config, killed=True, env=kill)
    assert load_checkpoint(resumed_dir / "ckpt_last.pt").iter_num == KILL_AFTER_ITER
    output = train_cli(config)
    assert f"resuming from {resumed_dir / 'ckpt_last.pt'} at iter {KILL_AFTER_ITER}" in output

    reference_losses = _train_losses(reference_dir)
    assert [step for step, _ in reference_losses] == list(range(MAX_ITERS))
    assert _train_losses(resumed_dir) == reference_losses  # exact float equality, every step

    reference, resumed = load_checkpoint(reference_dir / "ckpt_last.pt"), load_checkpoint(resumed_dir / "ckpt_last.pt")
    assert resumed.iter_num == reference.iter_num == MAX_ITERS
    assert resumed.model.keys() == reference.model.keys()
    assert all(torch.equal(resumed.model[key], value) for key, value in reference.model.items())
    assert resumed.best_val_loss == reference.best_val_loss

    # The raw event files: the killed run logged (and flushed) 5 steps past its checkpoint; the
    # restarted run's file opens with a START marker at the resume step, ahead of its scalars,
    # which is what makes TensorBoard drop those 5 steps of the killed run.
    (reference_events,) = _raw_events(reference_dir / "logs" / "tb")
    assert _session_starts(reference_events) == []  # a fresh run purges nothing
    killed_events, resumed_events = _raw_events(resumed_dir / "logs" / "tb")
    assert _train_loss_steps(killed_events) == list(range(KILL_AFTER_ITER + STEPS_PAST_CHECKPOINT))
    assert _session_starts(killed_events) == []
    ((position, step),) = _session_starts(resumed_events)
    assert step == KILL_AFTER_ITER
    assert all(not e.HasField("summary") for e in resumed_events[:position])
    assert _train_loss_steps(resumed_events) == list(range(KILL_AFTER_ITER, MAX_ITERS))


@pytest.mark.slow
def test_muon_sigkill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    """optimizer = "muon": the loss falls, and a SIGKILLed run resumes to the same weights."""
    write_char_dataset(tmp_path / "ds")
    muon = {"optimizer": "muon", "learning_rate": 1e-2, "muon_learning_rate": 0.02, "muon_weight_decay": 0.01}

    def table(out_dir: Path) -> dict[str, Any]:
        base = _table(tmp_path / "ds", out_dir)
        return {**base, "optim": {**base.get("optim", {}), **muon}}

    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    train_cli(write_toml(tmp_path / "reference.toml", {"train": table(reference_dir)}))
    config = write_toml(tmp_path / "resumed.toml", {"train": table(resumed_dir)})
    kill = spec(rank=0, after_iter=KILL_AFTER_ITER, steps=STEPS_PAST_CHECKPOINT, marker=tmp_path / "killed")
    train_cli(config, killed=True, env=kill)
    train_cli(config)

    reference_losses = _train_losses(reference_dir)
    assert _train_losses(resumed_dir) == reference_losses
    first, last = reference_losses[0][1], reference_losses[-1][1]
    assert last < first - 0.5
    reference, resumed = load_checkpoint(reference_dir / "ckpt_last.pt"), load_checkpoint(resumed_dir / "ckpt_last.pt")
    assert resumed.iter_num == reference.iter_num == MAX_ITERS
    assert all(torch.equal(resumed.model[key], value) for key, value in reference.model.items())
    assert reference.optimizer is not None
    assert resumed.optimizer is not None
    assert len(reference.optimizer["param_groups"]) == 3  # AdamW decay, AdamW no decay, Muon
