from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from ml_playground.analysis.examples import (
    build_examples,
    snippet_offsets,
    validation_snippets,
)
from ml_playground.config import DataConfig
from ml_playground.data.meta import DatasetMeta, write_meta
from ml_playground.errors import DataError
from ml_playground.tokenizers import CharTokenizer

TEXT = "abcdefghijklmnopqrstuvwxyz" * 3


def _dataset(tmp_path: Path, text: str = TEXT) -> tuple[DataConfig, CharTokenizer]:
    tokenizer = CharTokenizer(sorted(set(text)))
    ids = np.asarray(tokenizer.encode(text), dtype=np.uint16)
    ids.tofile(tmp_path / "val.bin")
    meta = DatasetMeta(kind="char", vocab_size=tokenizer.vocab_size, dtype="uint16", itos=tokenizer.itos)
    write_meta(tmp_path / "meta.json", meta)
    return DataConfig(dataset_dir=tmp_path), tokenizer


def test_offsets_are_evenly_spaced_and_inside() -> None:
    assert snippet_offsets(100, 3, 10) == [0, 45, 90]
    assert snippet_offsets(100, 1, 10) == [0]
    assert snippet_offsets(25, 5, 10) == [0, 15]  # only two windows fit
    assert snippet_offsets(5, 3, 10) == []
    assert snippet_offsets(100, 0, 10) == []


def test_snippets_decode_windows_of_the_split(tmp_path: Path) -> None:
    data, tokenizer = _dataset(tmp_path)
    snippets = validation_snippets(data.val_path, tokenizer, np.dtype("<u2"), count=3, length=5)
    assert snippets == [TEXT[0:5], TEXT[36:41], TEXT[72:77]]


def test_examples_start_with_the_prompt(tmp_path: Path) -> None:
    data, tokenizer = _dataset(tmp_path)
    examples = build_examples("abc", data, tokenizer, count=2, length=4)
    assert [(e.text, e.source) for e in examples] == [
        ("abc", "prompt"),
        (TEXT[:4], "validation"),
        (TEXT[-4:], "validation"),
    ]


def test_missing_split_serves_the_prompt_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, tokenizer = _dataset(tmp_path)
    with caplog.at_level(logging.WARNING):
        examples = build_examples("abc", DataConfig(dataset_dir=tmp_path / "absent"), tokenizer, count=2, length=4)
        no_data = build_examples("abc", None, tokenizer, count=2, length=4)
    assert [e.source for e in examples] == [e.source for e in no_data] == ["prompt"]
    assert "val.bin not found" in caplog.text
    assert "no [train.data]" in caplog.text


def test_a_dataset_of_another_vocabulary_is_an_error(tmp_path: Path) -> None:
    data, _ = _dataset(tmp_path)
    with pytest.raises(DataError, match="vocab_size 26 differs"):
        build_examples("abc", data, CharTokenizer(list("abc")), count=2, length=4)
