from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import pytest

from ml_playground.errors import CheckpointError, ConfigError, DataError, DeviceError
from ml_playground.model import GPT
from ml_playground.runtime import mps_available
from ml_playground.train.checkpoint import load_checkpoint, model_args_of
from ml_playground.train.run import run_training
from tests.support.tiny_training import TEXT, read_scalars, tiny_train_table, train_config, write_char_dataset

VOCAB = len(set(TEXT))


@pytest.fixture
def table(tmp_path: Path) -> dict[str, Any]:
    write_char_dataset(tmp_path / "ds")
    return tiny_train_table(tmp_path / "ds", tmp_path / "out")


def test_run_writes_a_complete_checkpoint(table: dict[str, Any]) -> None:
    cfg = train_config(table)
    result = run_training(cfg)
    assert result.iter_num == 6
    out = cfg.runtime.out_dir
    assert sorted(p.name for p in out.iterdir()) == [".lock", "ckpt_best.pt", "ckpt_last.pt", "logs"]
    assert (out / ".lock").read_text() == f"{os.getpid()}\n"  # the run's out_dir lock names its holder
    ckpt = load_checkpoint(out / "ckpt_last.pt")
    assert ckpt.iter_num == 6
    assert model_args_of(ckpt.arch) == {
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 16,
        "block_size": 16,
        "bias": False,
        "vocab_size": VOCAB,
        "dropout": 0.0,
    }
    assert ckpt.dataset_meta is not None
    assert ckpt.dataset_meta["kind"] == "char"
    assert ckpt.config["runtime"]["out_dir"] == str(out)
    assert ckpt.config["optim"]["learning_rate"] == 1e-2
    assert ckpt.optimizer is not None
    assert len(ckpt.optimizer["state"]) == sum(1 for _ in GPT(ckpt.arch).parameters())
    assert ckpt.rng is not None
    assert set(ckpt.rng) >= {"python", "numpy", "torch"}
    assert ckpt.data_state is not None
    assert ckpt.data_state["mode"] == "random"
    assert ckpt.scaler is None  # GradScaler only for float16 on CUDA
    assert math.isfinite(ckpt.best_val_loss)
    assert ckpt.best_val_loss == result.best_val_loss
    model = GPT(ckpt.arch)
    model.load_state_dict(ckpt.model)
    assert all(not key.startswith("_orig_mod.") for key in ckpt.model)


def test_checkpoint_model_args_take_precedence(
    table: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_training(train_config(table))
    table["model"] = {**table["model"], "n_embd": 32, "n_head": 4}
    table["runtime"] = {**table["runtime"], "max_iters": 9}
    with caplog.at_level(logging.INFO, logger="ml_playground.train"):
        result = run_training(train_config(table))
    assert result.iter_num == 9
    assert "checkpoint model_args take precedence over TOML: n_head=2 (TOML 4), n_embd=16 (TOML 32)" in caplog.text
    assert "resuming from" in caplog.text
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt_last.pt")
    assert (ckpt.arch.n_embd, ckpt.iter_num) == (16, 9)


def test_eval_only_evaluates_without_writing(table: dict[str, Any], tmp_path: Path) -> None:
    table["runtime"] = {**table["runtime"], "eval_only": True}
    result = run_training(train_config(table))
    assert result.iter_num == 0
    assert result.last_eval is not None
    assert not (tmp_path / "out" / "ckpt_last.pt").exists()


def test_bfloat16_autocast_trains_on_cpu(table: dict[str, Any]) -> None:
    table["runtime"] = {**table["runtime"], "dtype": "bfloat16", "max_iters": 3}
    result = run_training(train_config(table))
    assert result.last_eval is not None
    assert math.isfinite(result.last_eval["val"])


def test_tensorboard_scalars_are_written(table: dict[str, Any], tmp_path: Path) -> None:
    run_training(train_config(table))
    scalars = read_scalars(tmp_path / "out" / "logs" / "tb")
    expected = {"train/loss", "val/loss", "train/lr", "train/tokens_per_sec", "train/step_time_ms", "train/mfu"}
    assert expected <= set(scalars)
    assert [step for step, _ in scalars["train/loss"]] == list(range(6))
    assert [step for step, _ in scalars["val/loss"]] == [0, 3, 6]
    assert scalars["train/lr"][0][1] == pytest.approx(1e-2 / 3)
    assert all(value > 0 for _, value in scalars["train/tokens_per_sec"] + scalars["train/mfu"])


def test_unavailable_device_is_an_error(table: dict[str, Any]) -> None:
    device = "cuda" if mps_available() else "mps"
    table["runtime"] = {**table["runtime"], "device": device}
    with pytest.raises(DeviceError, match=f"device '{device}' is configured but"):
        run_training(train_config(table))


def test_unwritable_out_dir_is_an_error(table: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    table["runtime"] = {**table["runtime"], "out_dir": str(blocker / "run")}
    with pytest.raises(CheckpointError, match=r"train\.runtime\.out_dir: .*a_file/run cannot be written"):
        run_training(train_config(table))


def test_corrupt_last_checkpoint_is_reported_and_kept(table: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt_last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"ckpt_last\.pt: checkpoint is truncated or corrupted"):
        run_training(train_config(table))
    assert (out / "ckpt_last.pt").read_bytes() == b"PK\x03\x04 truncated"


def test_missing_dataset_and_small_vocab_are_errors(table: dict[str, Any], tmp_path: Path) -> None:
    table["model"] = {**table["model"], "vocab_size": 5}
    with pytest.raises(ConfigError, match=r"train\.model\.vocab_size: 5 is smaller than the dataset's vocabulary"):
        run_training(train_config(table))
    table["data"] = {**table["data"], "dataset_dir": str(tmp_path / "nowhere")}
    with pytest.raises(DataError, match="dataset metadata not found"):
        run_training(train_config(table))
