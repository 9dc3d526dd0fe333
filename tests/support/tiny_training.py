"""Tiny char-level datasets and train configs written by tests (no prepared corpus needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml_playground.config import TrainConfig
from ml_playground.config_loader import parse_experiment_config
from ml_playground.data.meta import DatasetMeta, write_meta
from ml_playground.train.metrics import read_scalars

__all__ = ["TEXT", "read_scalars", "text_with_whole_steps", "tiny_train_table", "train_config", "write_char_dataset"]

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
) * 8


def write_char_dataset(dataset_dir: Path, text: str = TEXT) -> DatasetMeta:
    """train.bin / val.bin (uint16 ids) and meta.json for a char-level corpus (90/10 split)."""
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype="<u2")
    cut = int(len(ids) * 0.9)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    ids[:cut].tofile(dataset_dir / "train.bin")
    ids[cut:].tofile(dataset_dir / "val.bin")
    meta = DatasetMeta(
        kind="char", vocab_size=len(chars), dtype="uint16", itos=chars, train_tokens=cut, val_tokens=len(ids) - cut
    )
    write_meta(dataset_dir / "meta.json", meta)
    return meta


def text_with_whole_steps(block: int, windows_per_step: int, *, repeats: int = 4) -> str:
    """TEXT (`repeats` times) cut so that its train split holds a multiple of `windows_per_step`
    windows of `block` tokens: every step of a 1-rank and a 2-rank run covers the same windows,
    across epochs too (sequential sampler)."""
    text = TEXT * repeats
    for length in range(len(text), 0, -1):
        windows = (int(length * 0.9) - 1) // block
        if windows % windows_per_step == 0 and (int(length * 0.9) - 1) % block == 0:
            return text[:length]
    raise AssertionError("no suitable corpus length")


def tiny_train_table(dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    """A [train] table (as parsed TOML) for a 1-layer, 16-wide model; tests override keys."""
    return {
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.0},
        "data": {"dataset_dir": str(dataset_dir), "batch_size": 4, "block_size": 16, "grad_accum_steps": 1},
        "optim": {"learning_rate": 1e-2, "weight_decay": 0.1, "grad_clip": 1.0},
        "schedule": {"warmup_iters": 2, "lr_decay_iters": 20, "min_lr": 1e-3},
        "runtime": {
            "out_dir": str(out_dir),
            "max_iters": 6,
            "eval_interval": 3,
            "eval_iters": 2,
            "log_interval": 1,
            "seed": 7,
            "peak_flops": 1e12,
        },
    }


def train_config(table: dict[str, Any]) -> TrainConfig:
    parsed = parse_experiment_config({"train": table}, Path("test.toml"))
    assert parsed.train is not None
    return parsed.train
