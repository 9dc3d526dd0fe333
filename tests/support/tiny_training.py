"""Tiny char-level datasets and train configs written by tests (no prepared corpus needed)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml_playground.config import TrainConfig
from ml_playground.config_loader import parse_experiment_config
from ml_playground.data.meta import DatasetMeta, Shard, shards_sha256, write_meta
from ml_playground.train.metrics import read_scalars

__all__ = ["TEXT", "read_scalars", "text_with_whole_steps", "tiny_train_table", "train_config", "write_char_dataset"]

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
) * 8


def write_char_dataset(dataset_dir: Path, text: str = TEXT, shards: int = 1) -> DatasetMeta:
    """train.bin / val.bin (uint16 ids) and meta.json for a char-level corpus (90/10 split); with
    `shards` > 1 the same ids, each split cut into that many shard files listed in meta.json."""
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype="<u2")
    cut = int(len(ids) * 0.9)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    meta = DatasetMeta(
        kind="char", vocab_size=len(chars), dtype="uint16", itos=chars, train_tokens=cut, val_tokens=len(ids) - cut
    )
    if shards == 1:
        ids[:cut].tofile(dataset_dir / "train.bin")
        ids[cut:].tofile(dataset_dir / "val.bin")
    else:
        listed = {
            split: _shards(dataset_dir, split, part, shards)
            for split, part in (("train", ids[:cut]), ("val", ids[cut:]))
        }
        meta = replace(
            meta,
            train_shards=listed["train"],
            val_shards=listed["val"],
            train_sha256=shards_sha256(listed["train"]),
            val_sha256=shards_sha256(listed["val"]),
        )
    write_meta(dataset_dir / "meta.json", meta)
    return meta


def _shards(dataset_dir: Path, split: str, ids: npt.NDArray[np.uint16], count: int) -> tuple[Shard, ...]:
    shards: list[Shard] = []
    for i, part in enumerate(np.array_split(ids, count)):
        name = f"{split}-{i:05d}.bin"
        part.tofile(dataset_dir / name)
        shards.append(Shard(file=name, tokens=len(part), sha256=hashlib.sha256(part.tobytes()).hexdigest()))
    return tuple(shards)


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
