from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml_playground import registry
from ml_playground.config import PrepareConfig
from ml_playground.data.meta import read_meta
from ml_playground.data.prepare import STAMP_FILENAME
from ml_playground.experiments.shakespeare.corpus import bundled_text
from ml_playground.tokenizers import tokenizer_from_meta


@pytest.mark.slow
def test_shakespeare_prepares_offline_from_bundled_corpus(tmp_path: Path) -> None:
    cfg = PrepareConfig(dataset_dir=tmp_path, source="bundled", tokenizer="tiktoken", encoding="gpt2")
    registry.get("shakespeare").preparer(cfg)

    meta = read_meta(tmp_path / "meta.json")
    assert (meta.kind, meta.encoding, meta.vocab_size, meta.dtype) == ("tiktoken", "gpt2", 50257, "uint16")
    train = np.memmap(tmp_path / "train.bin", dtype=meta.numpy_dtype, mode="r")
    val = np.memmap(tmp_path / "val.bin", dtype=meta.numpy_dtype, mode="r")
    assert (len(train), len(val)) == (meta.train_tokens, meta.val_tokens)
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
    tokenizer = tokenizer_from_meta(meta)
    text = bundled_text()
    head = tokenizer.decode(train[:200].tolist())
    assert text.startswith(head)
    assert text.endswith(tokenizer.decode(val[-200:].tolist()))

    stamp = (tmp_path / STAMP_FILENAME).stat().st_mtime_ns
    registry.get("shakespeare").preparer(cfg)  # up to date: nothing rewritten
    assert (tmp_path / STAMP_FILENAME).stat().st_mtime_ns == stamp
