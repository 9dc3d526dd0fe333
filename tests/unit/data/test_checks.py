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
from ml_playground.data.prepare import prepare_corpus
from ml_playground.errors import DataError
from ml_playground.train.loop import train
from tests.support.tiny_training import TEXT, tiny_train_table, train_config, write_char_dataset


def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


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
    cache = tmp_path / ".train.bin.scan.json"
    assert json.loads(cache.read_text())["max_id"] == 9
    record = json.loads(cache.read_text())
    cache.write_text(json.dumps(record | {"max_id": 3}))  # the cache is what a second call reads
    assert max_token_id(path, np.dtype("<u2")) == 3
    before = path.stat()
    np.array([1, 2, 70], dtype="<u2").tofile(path)  # same size, mtime set back: the ctime still moved
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert max_token_id(path, np.dtype("<u2")) == 70


def test_the_cache_is_keyed_by_the_dtype_it_was_read_as(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    np.array([1, 9, 4, 2], dtype="<u2").tofile(path)
    assert max_token_id(path, np.dtype("<u2")) == 9
    assert max_token_id(path, np.dtype("<u4")) == (9 << 16) + 1  # not the uint16 answer
    assert max_token_id(path, np.dtype("<u2")) == 9  # and back


def test_an_edited_dtype_is_refused_and_the_restored_metadata_passes(table: dict[str, Any], tmp_path: Path) -> None:
    """The stale-cache trap: a meta.json edited to another dtype must not pass on the old scan, and
    putting it back must not be refused by the edited one's scan."""
    path = tmp_path / "ds" / "meta.json"
    meta = read_meta(path)
    data = train_config(table).data
    check_dataset(data, meta)  # scans and caches both files as uint16
    assert meta.train_tokens is not None
    assert meta.val_tokens is not None
    assert meta.train_tokens % 2 == 0
    halves = dataclasses.replace(
        meta, dtype="uint32", train_tokens=meta.train_tokens // 2, val_tokens=meta.val_tokens // 2
    )
    # counts that fit the sizes as uint32: only a fresh scan as uint32 can refuse it
    with pytest.raises(DataError, match=r"train\.bin: largest token id \d+ is outside the vocabulary"):
        check_dataset(data, halves)
    check_dataset(data, meta)


def test_token_files_that_do_not_fit_meta_json_are_refused(table: dict[str, Any], tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    meta = read_meta(ds / "meta.json")
    data = train_config(table).data
    original = (ds / "train.bin").read_bytes()
    (ds / "train.bin").write_bytes(original[:-4])  # cut short by two tokens: an even size, as after a full disk
    expected = (
        rf"{ds / 'train.bin'}: {len(original) - 4} bytes, but {ds / 'meta.json'} records "
        rf"{meta.train_tokens} uint16 tokens \({len(original)} bytes\)"
    )
    with pytest.raises(DataError, match=expected):
        check_dataset(data, meta)
    (ds / "train.bin").write_bytes(original)
    (ds / "val.bin").write_bytes(b"")
    with pytest.raises(DataError, match=rf"val\.bin: 0 bytes, but .* records {meta.val_tokens} uint16 tokens"):
        check_dataset(data, meta)
    with pytest.raises(DataError, match=r"val\.bin: 0 tokens, need more than block_size 16"):
        check_dataset(data, dataclasses.replace(meta, val_tokens=None))
    (ds / "val.bin").unlink()
    with pytest.raises(DataError, match=r"val\.bin: token file not found"):
        check_dataset(data, meta)


def test_token_files_that_differ_from_the_recorded_sha256_are_refused(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    meta = prepare_corpus(corpus(tmp_path), ds, tokenizer="char", encoding="gpt2", val_fraction=0.1)
    table = tiny_train_table(ds, tmp_path / "out")
    check_dataset(train_config(table).data, meta)
    ids = np.fromfile(ds / "train.bin", dtype="<u2")
    ids[[5, 6]] = ids[[6, 5]]  # same size, same ids, another order
    ids.tofile(ds / "train.bin")
    with pytest.raises(DataError, match=r"train\.bin: content differs from the sha256 .*meta\.json records"):
        check_dataset(train_config(table).data, meta)


def test_a_meta_json_that_is_not_json_or_lacks_a_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match=rf"{path}: not valid JSON"):
        read_meta(path)
    path.write_text(json.dumps({"version": 1, "kind": "char", "dtype": "uint16", "itos": ["a"]}))
    with pytest.raises(DataError, match=rf"{path}: .*vocab_size"):
        read_meta(path)
