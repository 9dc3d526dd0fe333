from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml_playground.data.batches import BatchSource
from ml_playground.model import GPT, GPTConfig
from ml_playground.runtime import Runtime
from ml_playground.train.checkpoint import load_checkpoint
from ml_playground.train.distributed import DistInfo
from ml_playground.train.loop import LoopContext, TrainState, build_loop, maybe_save
from ml_playground.train.targets import GPTTarget
from tests.support.tiny_training import TEXT, tiny_train_table, train_config, write_char_dataset

VOCAB = len(set(TEXT))


@pytest.fixture
def table(tmp_path: Path) -> dict[str, Any]:
    write_char_dataset(tmp_path / "ds")
    return tiny_train_table(tmp_path / "ds", tmp_path / "out")


def _loop_for(table: dict[str, Any], *, always: bool) -> LoopContext:
    table["runtime"]["always_save_checkpoint"] = always
    cfg = train_config(table)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**table["model"], vocab_size=VOCAB))
    batches = BatchSource(
        train_path=cfg.data.train_path,
        val_path=cfg.data.val_path,
        token_dtype=np.dtype("<u2"),
        batch_size=2,
        block_size=16,
        device=torch.device("cpu"),
    )
    return build_loop(
        cfg, GPTTarget(model), batches, Runtime(torch.device("cpu"), "float32"), dist=DistInfo(), dataset_meta=None
    )


def test_best_is_saved_only_on_improvement(table: dict[str, Any]) -> None:
    loop = _loop_for(table, always=False)
    out = loop.out_dir
    state = TrainState(iter_num=0)
    maybe_save(loop, state, 2.0)
    assert load_checkpoint(out / "ckpt_best.pt").iter_num == 0
    assert state.best_val_loss == 2.0
    state.iter_num = 3
    maybe_save(loop, state, 2.5)  # worse: only ckpt_last.pt moves on
    assert load_checkpoint(out / "ckpt_last.pt").iter_num == 3
    assert load_checkpoint(out / "ckpt_best.pt").iter_num == 0
    assert load_checkpoint(out / "ckpt_last.pt").best_val_loss == 2.0
    state.iter_num = 6
    maybe_save(loop, state, 1.5)
    assert load_checkpoint(out / "ckpt_best.pt").iter_num == 6
    assert state.best_val_loss == 1.5


def test_always_save_checkpoint_writes_best_at_every_eval(table: dict[str, Any]) -> None:
    loop = _loop_for(table, always=True)
    state = TrainState(iter_num=0)
    maybe_save(loop, state, 2.0)
    state.iter_num = 3
    maybe_save(loop, state, 2.5)
    assert load_checkpoint(loop.out_dir / "ckpt_best.pt").iter_num == 3
    assert state.best_val_loss == 2.0
