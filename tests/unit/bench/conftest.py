"""The context every case receives, on a tiny char-level corpus and the TINY sizes (a smoke run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml_playground.bench.context import TINY, BenchContext
from ml_playground.train.metrics import PrecisionProbe
from tests.support.tiny_training import write_char_dataset


@pytest.fixture
def ctx(tmp_path: Path) -> BenchContext:
    char_dir = tmp_path / "char"
    return BenchContext(
        device_name="cpu",
        device=torch.device("cpu"),
        sizes=TINY,
        warmup=1,
        reps=2,
        corpus=tmp_path / "corpus.txt",
        char_dir=char_dir,
        char_meta=write_char_dataset(char_dir),
        work_dir=tmp_path / "work",
        peaks={"float32": 1e9, "bfloat16": 2e9},
        bf16_probe=PrecisionProbe(float32_seconds=0.002, bfloat16_seconds=0.001),
        nanogpt=None,
        compile=False,
        force_bf16=False,
        tiny=True,
    )
