"""Graceful stop: SIGTERM, SIGINT or SIGHUP ends training after the current optimizer step with
ckpt_last.pt written, exit 128 + signal and one line; the resumed run is bit-identical to an
uninterrupted one, also when the stop comes between two evaluations and when a second signal
arrives while the checkpoint is written."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from ml_playground.config import PROJECT_ROOT
from ml_playground.train.checkpoint import load_checkpoint
from tests.support import torchrun
from tests.support.tiny_training import read_scalars, tiny_train_table, write_char_dataset
from tests.support.torchrun import write_toml

pytestmark = pytest.mark.slow

MAX_ITERS = 24
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _table(dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    table = tiny_train_table(dataset_dir, out_dir)
    table["model"] |= {"n_layer": 2, "n_embd": 32, "dropout": 0.1}  # dropout: the RNG must resume too
    table["data"] |= {"grad_accum_steps": 2}
    table["schedule"] = {"warmup_iters": 3, "lr_decay_iters": MAX_ITERS, "min_lr": 1e-3}
    table["runtime"] |= {"max_iters": MAX_ITERS, "eval_interval": 6}
    return table


def _train(
    table: dict[str, Any], fault: str = "SIGTERM", step: int = 10**6, *extra: str
) -> subprocess.CompletedProcess[str]:
    """The run entry point in a child that sends itself `fault` during training micro-step `step`."""
    command = [sys.executable, "-m", "tests.support.fault_targets", json.dumps(table), fault, str(step), *extra]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=ENV, check=False)


def _same_run(reference: Path, resumed: Path) -> None:
    ref_losses, res_losses = (read_scalars(out / "logs" / "tb")["train/loss"] for out in (reference, resumed))
    assert [step for step, _ in ref_losses] == list(range(MAX_ITERS))
    assert res_losses == ref_losses  # exact float equality, every step
    ref, res = load_checkpoint(reference / "ckpt_last.pt"), load_checkpoint(resumed / "ckpt_last.pt")
    assert res.iter_num == ref.iter_num == MAX_ITERS
    assert all(torch.equal(res.model[key], value) for key, value in ref.model.items())
    assert res.best_val_loss == ref.best_val_loss


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stop")
    write_char_dataset(root / "ds")
    result = _train(_table(root / "ds", root / "reference"))
    assert result.returncode == 0, result.stderr[-2000:]
    return root


# Micro-steps (2 per optimizer step): a stop inside step 5 (just before the eval at 6), inside
# step 6 (right after it) and at steps drawn at random between the evaluations.
_STEPS = [10, 13, *random.Random(7).sample([s for s in range(2, 2 * MAX_ITERS - 2) if s // 2 % 6 not in (0, 5)], 3)]


@pytest.mark.parametrize("micro_step", _STEPS)
def test_sigterm_saves_stops_and_resumes_bit_identically(reference: Path, micro_step: int) -> None:
    out = reference / f"stopped_{micro_step}"
    table = _table(reference / "ds", out)
    stopped = _train(table, "SIGTERM", micro_step)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    step = micro_step // 2 + 1  # the signal comes during a step; that step is finished first
    last_line = stopped.stderr.strip().splitlines()[-1]
    saved = out / "ckpt_last.pt"
    assert last_line == f"stopped: SIGTERM at iter {step}: saved {saved}; the same command resumes from there"
    assert "Traceback" not in stopped.stderr
    assert load_checkpoint(out / "ckpt_last.pt").iter_num == step
    resumed = _train(table)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {out / 'ckpt_last.pt'} at iter {step}" in resumed.stderr
    _same_run(reference / "reference", out)


def test_a_second_signal_while_saving_changes_nothing(reference: Path) -> None:
    out = reference / "twice"
    table = _table(reference / "ds", out)
    stopped = _train(table, "SIGINT", 15, "again")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "SIGINT received again: still saving" in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("stopped: SIGINT at iter 8: saved")
    assert load_checkpoint(out / "ckpt_last.pt").iter_num == 8
    assert _train(table).returncode == 0
    _same_run(reference / "reference", out)


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGHUP", 129)])
def test_ctrl_c_or_a_closed_terminal_on_the_cli_saves_and_exits_128_plus_signal(
    tmp_path: Path, name: str, code: int
) -> None:
    """A user's Ctrl-C (SIGINT) or a terminal that closes (SIGHUP), from outside, at whatever step
    the run has reached."""
    write_char_dataset(tmp_path / "ds")
    table = _table(tmp_path / "ds", tmp_path / "out")
    table["runtime"] |= {"max_iters": 100_000, "eval_interval": 5}
    config = tmp_path / "run.toml"
    config.write_text(
        "[train.model]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table["model"].items())
        + "[train.data]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table["data"].items())
        + "[train.runtime]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table["runtime"].items())
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "ml_playground.cli", "train", "bundestag_char", "--exp-config", str(config)],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "out" / "ckpt_last.pt").exists():  # training has started
            assert process.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.Signals[name])
        _, stderr = process.communicate(timeout=240)
    finally:
        process.kill()
    assert process.returncode == code, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"stopped: {name} at iter ")
    assert "Traceback" not in stderr
    iter_num = int(line.split("at iter ")[1].split(":")[0])
    assert load_checkpoint(tmp_path / "out" / "ckpt_last.pt").iter_num == iter_num


def test_under_torchrun_a_signal_to_one_rank_stops_both_at_the_same_step(tmp_path: Path) -> None:
    """SIGTERM reaches rank 1 only; the ranks agree at the next log step, both save-and-stop at
    the same iter, and a rerun resumes there to the weights of an uninterrupted 2-rank run."""
    write_char_dataset(tmp_path / "ds")
    table = _table(tmp_path / "ds", tmp_path / "out")
    table["runtime"] |= {"max_iters": 100_000, "eval_interval": 10, "log_interval": 3}
    config = write_toml(tmp_path / "run.toml", {"train": table})
    process = torchrun.start(config, nproc=2)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "out" / "ckpt_last.pt").exists():  # both ranks are training
            assert process.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ranks = [p for p in psutil.Process(process.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        assert len(ranks) == 1
        ranks[0].send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    # Both ranks write to one pipe, so their lines can run together: find the stops in the text.
    stops = re.findall(r"stopped: SIGTERM at iter (\d+): saved (\S+ckpt_last\.pt)", output)
    assert len(stops) == 2, output[-3000:]  # rank 0 got no signal, yet stopped too
    assert stops[0] == stops[1]  # the same step and the same saved file on both ranks
    step = int(stops[0][0])
    assert load_checkpoint(tmp_path / "out" / "ckpt_last.pt").iter_num == step

    for out in ("out", "reference"):
        table["runtime"] |= {"max_iters": step + 4, "out_dir": str(tmp_path / out)}
        finished = torchrun.run(write_toml(tmp_path / f"{out}.toml", {"train": table}), nproc=2)
        assert finished.returncode == 0, finished.stderr[-3000:]
    resumed, reference = (load_checkpoint(tmp_path / out / "ckpt_last.pt") for out in ("out", "reference"))
    assert resumed.iter_num == reference.iter_num == step + 4
    assert all(torch.equal(resumed.model[key], value) for key, value in reference.model.items())
