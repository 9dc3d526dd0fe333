"""Exact resume: a training process killed with SIGKILL mid-run and restarted reproduces the
uninterrupted run bit for bit (per-step losses and final weights) on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.train.checkpoint import load_checkpoint
from tests.support.tiny_training import read_scalars, tiny_train_table, write_char_dataset

_TRAIN = (
    "import json, logging, sys\n"
    "from pathlib import Path\n"
    "from ml_playground.config_loader import parse_experiment_config\n"
    "from ml_playground.train.run import run_training\n"
    "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
    "cfg = parse_experiment_config({'train': json.loads(sys.argv[1])}, Path('resume.toml'))\n"
    "assert cfg.train is not None\n"
    "run_training(cfg.train)\n"
)
MAX_ITERS = 80
KILL_AFTER_ITER = 20


def _table(dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    table = tiny_train_table(dataset_dir, out_dir)
    table["model"] = {**table["model"], "n_layer": 2, "n_embd": 32, "n_head": 2, "dropout": 0.1}
    table["data"] = {**table["data"], "grad_accum_steps": 2}
    table["schedule"] = {"warmup_iters": 5, "lr_decay_iters": MAX_ITERS, "min_lr": 1e-3}
    table["runtime"] = {**table["runtime"], "max_iters": MAX_ITERS, "eval_interval": 10}
    return table


def _start(table: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _TRAIN, json.dumps(table)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # One intra-op thread: the CPU is shared, and spinning thread pools only slow tiny models down.
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _finish(table: dict[str, Any]) -> str:
    process = _start(table)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def _train_losses(out_dir: Path) -> list[tuple[int, float]]:
    return read_scalars(out_dir / "logs" / "tb")["train/loss"]


def _kill_mid_run(table: dict[str, Any], out_dir: Path) -> int:
    """Start training, SIGKILL it once a checkpoint past KILL_AFTER_ITER exists; return that iter."""
    process = _start(table)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            last = out_dir / "ckpt_last.pt"
            if last.exists() and load_checkpoint(last).iter_num >= KILL_AFTER_ITER:
                process.send_signal(signal.SIGKILL)
                break
            assert process.poll() is None, "training finished before it could be killed"
            time.sleep(0.02)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    return load_checkpoint(out_dir / "ckpt_last.pt").iter_num


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    write_char_dataset(tmp_path / "ds")
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    _finish(_table(tmp_path / "ds", reference_dir))

    killed_at = _kill_mid_run(_table(tmp_path / "ds", resumed_dir), resumed_dir)
    assert KILL_AFTER_ITER <= killed_at < MAX_ITERS
    output = _finish(_table(tmp_path / "ds", resumed_dir))
    assert f"resuming from {resumed_dir / 'ckpt_last.pt'} at iter {killed_at}" in output

    reference_losses = _train_losses(reference_dir)
    assert [step for step, _ in reference_losses] == list(range(MAX_ITERS))
    assert _train_losses(resumed_dir) == reference_losses  # exact float equality, every step

    reference, resumed = load_checkpoint(reference_dir / "ckpt_last.pt"), load_checkpoint(resumed_dir / "ckpt_last.pt")
    assert resumed.iter_num == reference.iter_num == MAX_ITERS
    assert resumed.model.keys() == reference.model.keys()
    assert all(torch.equal(resumed.model[key], value) for key, value in reference.model.items())
    assert resumed.best_val_loss == reference.best_val_loss
