"""Dataset consistency: token ids beyond the metadata's vocabulary and metadata that does not fit
its tokenizer are one-line errors naming the file, before any training step."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_playground.data.checks import check_dataset, max_token_id
from ml_playground.data.meta import read_meta, write_meta
from ml_playground.errors import DataError
from ml_playground.train.loop import train
from tests.support.tiny_training import tiny_train_table, train_config, write_char_dataset


@pytest.fixture
def table(tmp_path: Path) -> dict[str, Any]:
    write_char_dataset(tmp_path / "ds")
    return tiny_train_table(tmp_path / "ds", tmp_path / "out")


def test_ids_beyond_the_vocabulary_stop_training_naming_the_file(table: dict[str, Any], tmp_path: Path) -> None:
    meta = read_meta(tmp_path / "ds" / "meta.json")
    ids = np.fromfile(tmp_path / "ds" / "val.bin", dtype="<u2")
    ids[3] = meta.vocab_size + 4  # as if the bins came from another preparation
    ids.tofile(tmp_path / "ds" / "val.bin")
    with pytest.raises(DataError, match=rf"val\.bin: largest token id {meta.vocab_size + 4} is outside the vocabulary"):
        train(train_config(table))
    assert not (tmp_path / "out" / "ckpt_last.pt").exists()


def test_metadata_that_does_not_fit_its_tokenizer_is_an_error(table: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "ds" / "meta.json"
    meta = read_meta(path)
    assert meta.itos is not None
    write_meta(path, dataclasses.replace(meta, kind="tiktoken", encoding="gpt2", itos=None))
    mismatch = rf"{path}: vocab_size {meta.vocab_size} does not match its tokenizer \(gpt2: 50257"
    with pytest.raises(DataError, match=mismatch):
        check_dataset(train_config(table).data, read_meta(path))


def test_the_largest_id_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    np.array([1, 9, 4], dtype="<u2").tofile(path)
    assert max_token_id(path, np.dtype("<u2")) == 9
    cache = tmp_path / ".train.bin.maxid.json"
    assert json.loads(cache.read_text())["max_id"] == 9
    record = json.loads(cache.read_text())
    cache.write_text(json.dumps(record | {"max_id": 3}))  # the cache is what a second call reads
    assert max_token_id(path, np.dtype("<u2")) == 3
    before = path.stat()
    np.array([1, 2, 70], dtype="<u2").tofile(path)  # same size, a later mtime: computed again
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # even on coarse-clock filesystems
    assert max_token_id(path, np.dtype("<u2")) == 70


def test_a_meta_json_that_is_not_json_or_lacks_a_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match=rf"{path}: not valid JSON"):
        read_meta(path)
    path.write_text(json.dumps({"version": 1, "kind": "char", "dtype": "uint16", "itos": ["a"]}))
    with pytest.raises(DataError, match=rf"{path}: .*vocab_size"):
        read_meta(path)
