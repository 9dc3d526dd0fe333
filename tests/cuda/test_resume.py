"""Resume on CUDA: a run SIGKILLed 5 steps past its checkpoint and restarted reproduces the
uninterrupted run (bfloat16 autocast, dropout on, gradient accumulation).

The kill comes from tests/support/kill_switch.py, as in tests/integration/test_resume_exact.py.
Some CUDA kernels are not bitwise deterministic from run to run (atomics in backward passes), so
an uninterrupted run is done twice: the resumed run may differ from the reference by no more
than a few times what the second reference does (exactly nothing where the kernels are
deterministic). A resume that restores the wrong dropout stream or data position differs by far
more: a different run, not rounding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ml_playground.train.checkpoint import load_checkpoint
from tests.cuda.device import DEVICE, DTYPE
from tests.support.kill_switch import spec, train_cli
from tests.support.tiny_training import read_scalars, tiny_train_table, write_char_dataset
from tests.support.torchrun import write_toml

MAX_ITERS = 60
EVAL_INTERVAL = 10
KILL_AFTER_ITER = 20
STEPS_PAST_CHECKPOINT = 5


def _table(dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    table = tiny_train_table(dataset_dir, out_dir)
    table["model"] = {**table["model"], "n_layer": 2, "n_embd": 32, "n_head": 2, "dropout": 0.1}
    table["data"] = {**table["data"], "grad_accum_steps": 2}
    table["schedule"] = {"warmup_iters": 5, "lr_decay_iters": MAX_ITERS, "min_lr": 1e-3}
    table["runtime"] = {
        **table["runtime"],
        "max_iters": MAX_ITERS,
        "eval_interval": EVAL_INTERVAL,
        "device": DEVICE,
        "dtype": DTYPE,
    }
    return table


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    return read_scalars(out_dir / "logs" / "tb")["train/loss"]


def _largest_difference(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> float:
    assert [step for step, _ in a] == [step for step, _ in b]
    return max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    write_char_dataset(tmp_path / "ds")
    runs = {name: tmp_path / name for name in ("reference", "again", "resumed")}
    for name in ("reference", "again"):
        train_cli(write_toml(tmp_path / f"{name}.toml", {"train": _table(tmp_path / "ds", runs[name])}))

    config = write_toml(tmp_path / "resumed.toml", {"train": _table(tmp_path / "ds", runs["resumed"])})
    kill = spec(rank=0, after_iter=KILL_AFTER_ITER, steps=STEPS_PAST_CHECKPOINT, marker=tmp_path / "killed")
    train_cli(config, killed=True, env=kill)
    assert load_checkpoint(runs["resumed"] / "ckpt_last.pt").iter_num == KILL_AFTER_ITER
    output = train_cli(config)
    assert f"resuming from {runs['resumed'] / 'ckpt_last.pt'} at iter {KILL_AFTER_ITER}" in output

    reference = _losses(runs["reference"])
    assert [step for step, _ in reference] == list(range(MAX_ITERS))
    noise = _largest_difference(reference, _losses(runs["again"]))
    assert noise < 1e-2  # run-to-run variation, if any, is rounding
    assert _largest_difference(reference, _losses(runs["resumed"])) <= 4 * noise

    checkpoints = {name: load_checkpoint(folder / "ckpt_last.pt") for name, folder in runs.items()}
    assert {checkpoint.iter_num for checkpoint in checkpoints.values()} == {MAX_ITERS}
    for key, value in checkpoints["reference"].model.items():
        weight_noise = (value - checkpoints["again"].model[key]).abs().max().item()
        assert (value - checkpoints["resumed"].model[key]).abs().max().item() <= 4 * weight_noise, key
