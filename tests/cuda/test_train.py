"""Training on CUDA through the real trainer: bfloat16 autocast + torch.compile lowers the loss,
float16 autocast with the grad scaler too, and the logged throughput (train/tokens_per_sec)
agrees with the clock. Each run's forwards are read back (observe.py): on the GPU, in the
autocast dtype, compiled where asked."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from ml_playground.model import GPT
from ml_playground.train.checkpoint import load_checkpoint
from ml_playground.train.loop import train
from ml_playground.train.modes import Mode
from tests.cuda.device import DEVICE, DTYPE
from tests.cuda.observe import assert_ran, watch_mode
from tests.support.tiny_training import TEXT, read_scalars, tiny_train_table, train_config, write_char_dataset


def _table(dataset_dir: Path, out_dir: Path, **runtime: Any) -> dict[str, Any]:
    table = tiny_train_table(dataset_dir, out_dir)
    table["model"] = {**table["model"], "n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 32, "dropout": 0.0}
    table["data"] = {**table["data"], "batch_size": 16, "block_size": 32}
    table["runtime"] |= {"device": DEVICE, "dtype": DTYPE, **runtime}
    return table


@pytest.mark.slow
def test_bf16_compiled_training_lowers_the_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 steps in bfloat16 with torch.compile: the loss falls well below its start (ln vocab),
    val loss improves, and the checkpoint holds plain float32 weights that load into a GPT."""
    meta = write_char_dataset(tmp_path / "ds", TEXT * 4)
    table = _table(tmp_path / "ds", tmp_path / "out", compile=True, max_iters=40, eval_interval=20, log_interval=1)
    table["schedule"] = {"warmup_iters": 4, "lr_decay_iters": 40, "min_lr": 1e-3}
    mode = Mode()
    calls = watch_mode(mode, monkeypatch)
    result = train(train_config(table), mode)
    assert result.iter_num == 40
    assert_ran(calls, device=DEVICE, dtype=getattr(torch, DTYPE), compiled=True)

    scalars = read_scalars(tmp_path / "out" / "logs" / "tb")
    losses = [value for _, value in scalars["train/loss"]]
    assert len(losses) == 40
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first == pytest.approx(torch.log(torch.tensor(float(meta.vocab_size))).item(), rel=0.15)
    assert last < 0.6 * first
    val = [value for _, value in scalars["val/loss"]]
    assert [step for step, _ in scalars["val/loss"]] == [20, 40]
    assert val[-1] < first - 0.5

    checkpoint = load_checkpoint(tmp_path / "out" / "ckpt_best.pt")
    assert checkpoint.iter_num == 40
    assert {tensor.dtype for tensor in checkpoint.model.values()} == {torch.float32}
    assert not [key for key in checkpoint.model if key.startswith("_orig_mod.")]
    GPT(checkpoint.arch).load_state_dict(checkpoint.model)


@pytest.mark.slow
def test_float16_training_with_the_grad_scaler_lowers_the_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """float16 autocast: the grad scaler scales the loss (float16's range would lose small
    gradients), steps only with finite gradients, and its state is saved for resume."""
    meta = write_char_dataset(tmp_path / "ds", TEXT * 4)
    table = _table(tmp_path / "ds", tmp_path / "out", max_iters=40, eval_interval=20, log_interval=1)
    table["runtime"]["dtype"] = "float16"
    table["schedule"] = {"warmup_iters": 4, "lr_decay_iters": 40, "min_lr": 1e-3}
    mode = Mode()
    calls = watch_mode(mode, monkeypatch)
    result = train(train_config(table), mode)
    assert result.iter_num == 40
    assert_ran(calls, device=DEVICE, dtype=torch.float16, compiled=False)
    losses = [value for _, value in read_scalars(tmp_path / "out" / "logs" / "tb")["train/loss"]]
    assert len(losses) == 40
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first == pytest.approx(torch.log(torch.tensor(float(meta.vocab_size))).item(), rel=0.15)
    assert last < 0.6 * first
    checkpoint = load_checkpoint(tmp_path / "out" / "ckpt_last.pt")
    assert checkpoint.scaler is not None
    scale = float(checkpoint.scaler["scale"])
    assert 1.0 <= scale <= 2.0**16  # a loss scale in use: GradScaler starts at 2**16 and grows only after 2000 steps


def _synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.slow
def test_logged_tokens_per_second_matches_the_clock(tmp_path: Path) -> None:
    """Between two device synchronisations at steps WARMUP - 1 and MAX_ITERS - 1 (no evaluation in
    between), the logged train/tokens_per_sec times the elapsed time is the number of tokens
    trained, within 5%. Each logged rate stands for an equal number of tokens (one log interval),
    so their harmonic mean is the rate over the whole stretch. A rate taken from part of a step's
    time (the host's share while the device still works on queued steps, or without the work
    between steps) misses this."""
    max_iters, warmup, log_interval = 80, 20, 5
    write_char_dataset(tmp_path / "ds", TEXT * 4)
    table = _table(tmp_path / "ds", tmp_path / "out", max_iters=max_iters, eval_interval=max_iters)
    table["runtime"]["log_interval"] = log_interval
    # Large enough that the device, not Python, sets the pace of a step.
    table["model"] |= {"n_layer": 4, "n_embd": 256, "n_head": 4, "block_size": 128}
    table["data"] |= {"batch_size": 32, "block_size": 128}
    cfg = train_config(table)
    tokens_per_step = cfg.data.batch_size * cfg.data.block_size
    clock: dict[int, float] = {}

    def on_step(iter_num: int, _loss: Tensor) -> None:
        if iter_num in (warmup - 1, max_iters - 1):
            _synchronize()
            clock[iter_num] = time.perf_counter()

    train(cfg, on_step=on_step)

    elapsed = clock[max_iters - 1] - clock[warmup - 1]
    trained = (max_iters - warmup) * tokens_per_step
    logged = read_scalars(tmp_path / "out" / "logs" / "tb")["train/tokens_per_sec"]
    window = [value for step, value in logged if warmup <= step < max_iters]
    assert len(window) == (max_iters - warmup) // log_interval
    mean_rate = len(window) / sum(1.0 / rate for rate in window)
    assert mean_rate * elapsed == pytest.approx(trained, rel=0.05)
