from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest

from ml_playground.data.meta import DatasetMeta, dtype_for_vocab, identity_difference, read_meta, write_meta
from ml_playground.errors import DataError


def _char_meta() -> DatasetMeta:
    return DatasetMeta(
        kind="char",
        vocab_size=3,
        dtype="uint16",
        itos=["\n", "a", "ä"],
        train_tokens=90,
        val_tokens=10,
        source_sha256="0" * 64,
    )


def test_json_round_trip(tmp_path: Path) -> None:
    meta = _char_meta()
    write_meta(tmp_path / "meta.json", meta)
    assert read_meta(tmp_path / "meta.json") == meta
    assert DatasetMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    bpe = DatasetMeta(kind="tiktoken", vocab_size=100277, dtype="uint32", encoding="cl100k_base")
    assert DatasetMeta.from_dict(bpe.to_dict()) == bpe
    assert bpe.numpy_dtype.itemsize == 4
    assert meta.numpy_dtype.str == "<u2"


def test_dtype_for_vocab() -> None:
    assert dtype_for_vocab(50257) == "uint16"
    assert dtype_for_vocab(65536) == "uint16"
    assert dtype_for_vocab(65537) == "uint32"


def test_invalid_json_meta_names_file_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"version": 1, "kind": "wordpiece", "vocab_size": 70000, "dtype": "uint16", "bogus": 1}))
    with pytest.raises(DataError) as info:
        read_meta(path)
    message = str(info.value)
    assert str(path) in message
    assert "kind:" in message
    assert "bogus" in message
    assert "uint16 cannot hold" in message
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_meta(path)


def test_missing_meta_hints_at_the_other_file(tmp_path: Path) -> None:
    write_meta(tmp_path / "meta.json", _char_meta())
    with pytest.raises(DataError, match=r"meta\.json exists beside it"):
        read_meta(tmp_path / "meta.pkl")


def test_legacy_meta_pkl(tmp_path: Path) -> None:
    chars = ["\n", " ", "A", "b"]
    legacy = {"vocab_size": 4, "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(legacy))
    (tmp_path / "train.bin").write_bytes(bytes(2 * 7))
    meta = read_meta(tmp_path / "meta.pkl")
    assert meta.kind == "char"
    assert meta.itos == chars
    assert meta.vocab_size == 4
    assert meta.dtype == "uint16"
    assert meta.train_tokens == 7
    assert meta.val_tokens == 0


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_malicious_pickle_is_refused_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps({"vocab_size": 1, "itos": {0: "a"}, "evil": _Exploit()}))
    with pytest.raises(DataError, match=r"refusing to load builtins\.print"):
        read_meta(path)
    assert "pwned" not in capsys.readouterr().out
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match=str(path)):
        read_meta(path)


def test_version_1_metadata_without_token_hashes_or_counts_is_read(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"version": 1, "kind": "char", "vocab_size": 2, "dtype": "uint16", "itos": ["a", "b"]}))
    meta = read_meta(path)
    assert (meta.train_tokens, meta.val_tokens, meta.train_sha256, meta.val_sha256) == (None, None, None, None)
    v1 = DatasetMeta.from_dict(_char_meta().to_dict() | {"version": 1, "train_sha256": None})
    assert v1 == dataclasses.replace(_char_meta(), version=1)


def test_identity_difference_names_what_differs_in_one_line() -> None:
    meta = dataclasses.replace(_char_meta(), train_sha256="a" * 64, val_sha256="b" * 64)
    same = identity_difference(meta, dataclasses.replace(meta), a_name="ckpt_last.pt", b_name="meta.json")
    assert same == ""
    remapped = dataclasses.replace(meta, itos=["\n", "ä", "a"])
    line = identity_difference(meta, remapped, a_name="ckpt_last.pt", b_name="ds/meta.json")
    assert line == "ckpt_last.pt and ds/meta.json describe different datasets (token 1 is 'a' vs 'ä')"
    smaller = dataclasses.replace(meta, vocab_size=2, itos=["\n", "a"])
    assert "vocab_size 3 vs 2" in identity_difference(meta, smaller, a_name="x", b_name="y")
    bpe = DatasetMeta(kind="tiktoken", vocab_size=50257, dtype="uint16", encoding="gpt2")
    assert "tokenizer char vs gpt2" in identity_difference(meta, bpe, a_name="x", b_name="y")
    cl100k = dataclasses.replace(bpe, vocab_size=100277, dtype="uint32", encoding="cl100k_base")
    assert "tokenizer gpt2 vs cl100k_base" in identity_difference(bpe, cl100k, a_name="x", b_name="y")

    reprepared = dataclasses.replace(meta, train_sha256="c" * 64)
    line = identity_difference(meta, reprepared, a_name="x", b_name="y")
    assert line == f"x and y describe different datasets (train_sha256 {'a' * 12} vs {'c' * 12})"
    grown = dataclasses.replace(meta, val_tokens=11)
    assert "val_tokens 10 vs 11" in identity_difference(meta, grown, a_name="x", b_name="y")
    assert identity_difference(meta, reprepared, a_name="x", b_name="y", tokenizer_only=True) == ""
    # What only one side records (metadata from before token hashes) is not a difference.
    older = dataclasses.replace(meta, train_sha256=None, val_sha256=None, train_tokens=None)
    assert identity_difference(meta, older, a_name="x", b_name="y") == ""
