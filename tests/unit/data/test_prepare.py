from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_playground.data.documents import iter_text
from ml_playground.data.meta import read_meta
from ml_playground.data.prepare import STAMP_FILENAME, prepare_corpus, split_offset
from ml_playground.errors import DataError
from ml_playground.tokenizers import CharTokenizer, TiktokenTokenizer

SPEECH = (
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
    "JULIET:\n'Tis but thy name that is my enemy;  \nThou art thyself, though not a Montague.\n\n"
    "REDNER:\nSehr geehrte Damen und Herren, Größe, Übermaß, Ärger — 🎉 ok?\n\t\n  \n"
    "1234567 numbers 89.5%\r\nwindows line\r\n\n\n\nEND\n"
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "input.txt"
    path.write_bytes(text.encode("utf-8"))
    return path


def _expected_splits(path: Path, val_fraction: float) -> tuple[str, str]:
    raw = path.read_bytes()
    cut = split_offset(path, len(raw), val_fraction)
    return raw[:cut].decode("utf-8"), raw[cut:].decode("utf-8")


@pytest.mark.parametrize("encoding", ["gpt2", "cl100k_base"])
@pytest.mark.parametrize("chunk_bytes", [16, 100, 1 << 20])
def test_chunked_bpe_equals_whole_text_encoding(tmp_path: Path, encoding: str, chunk_bytes: int) -> None:
    path = _write(tmp_path, SPEECH * 7)
    meta = prepare_corpus(
        path, tmp_path / "ds", tokenizer="tiktoken", encoding=encoding, val_fraction=0.1, chunk_bytes=chunk_bytes
    )
    train_text, val_text = _expected_splits(path, 0.1)
    tok = TiktokenTokenizer(encoding)
    dtype = meta.numpy_dtype
    assert np.fromfile(tmp_path / "ds" / "train.bin", dtype=dtype).tolist() == tok.encode(train_text)
    assert np.fromfile(tmp_path / "ds" / "val.bin", dtype=dtype).tolist() == tok.encode(val_text)
    assert meta.kind == "tiktoken"
    assert meta.encoding == encoding
    assert meta.dtype == ("uint16" if encoding == "gpt2" else "uint32")
    assert meta.train_tokens == len(tok.encode(train_text))
    assert read_meta(tmp_path / "ds" / "meta.json") == meta


def test_char_level_prepare(tmp_path: Path) -> None:
    text = SPEECH * 3
    path = _write(tmp_path, text)
    meta = prepare_corpus(path, tmp_path / "ds", tokenizer="char", encoding="gpt2", val_fraction=0.1, chunk_bytes=32)
    assert meta.itos == sorted(set(text))
    assert meta.encoding is None
    tok = CharTokenizer(sorted(set(text)))
    train = np.fromfile(tmp_path / "ds" / "train.bin", dtype="<u2").tolist()
    val = np.fromfile(tmp_path / "ds" / "val.bin", dtype="<u2").tolist()
    assert tok.decode(train) + tok.decode(val) == text
    assert abs(len(val) / len(text) - 0.1) < 0.01


def test_long_lines_without_safe_cut_points_round_trip(tmp_path: Path) -> None:
    text = "äöü " * 3000 + "x" * 5000  # no newline: pieces are cut at spaces / char boundaries
    path = _write(tmp_path, text)
    pieces = list(iter_text(path, 0, path.stat().st_size, chunk_bytes=64))
    assert len(pieces) > 1
    assert "".join(p for _, p in pieces) == text
    meta = prepare_corpus(path, tmp_path / "ds", tokenizer="char", encoding="gpt2", val_fraction=0.2, chunk_bytes=64)
    tok = CharTokenizer(meta.itos or [])
    both = [np.fromfile(tmp_path / "ds" / name, dtype="<u2").tolist() for name in ("train.bin", "val.bin")]
    assert tok.decode(both[0]) + tok.decode(both[1]) == text


@pytest.mark.parametrize("tokenizer", ["char", "tiktoken"])
def test_invalid_utf8_names_file_and_byte_offset(tmp_path: Path, tokenizer: str) -> None:
    path = tmp_path / "input.txt"
    good = ("Zeile eins\nZeile zwei\n" * 20).encode("utf-8")
    path.write_bytes(good + b"kaputt \xc3\x28 hier\n" + good)
    offset = len(good) + len(b"kaputt ")
    with pytest.raises(DataError, match=rf"{path}: invalid UTF-8 at byte {offset}$"):
        prepare_corpus(
            path,
            tmp_path / "ds",
            tokenizer="char" if tokenizer == "char" else "tiktoken",
            encoding="gpt2",
            val_fraction=0.1,
            chunk_bytes=50,
        )
    assert not (tmp_path / "ds" / "train.bin").exists()


def test_empty_and_too_small_corpora(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    with pytest.raises(DataError, match=r"input\.txt: corpus is empty"):
        prepare_corpus(path, tmp_path / "ds", tokenizer="char", encoding="gpt2", val_fraction=0.1)
    path = _write(tmp_path, "abcdefghij")
    with pytest.raises(DataError, match=r"input\.txt: corpus too small: the val split has 1 token"):
        prepare_corpus(path, tmp_path / "ds", tokenizer="char", encoding="gpt2", val_fraction=0.1)
    with pytest.raises(DataError, match="corpus not found"):
        prepare_corpus(tmp_path / "nope.txt", tmp_path / "ds", tokenizer="char", encoding="gpt2", val_fraction=0.1)


def test_rerun_skips_when_up_to_date_and_redoes_on_change(tmp_path: Path) -> None:
    path = _write(tmp_path, SPEECH * 5)
    ds = tmp_path / "ds"
    first = prepare_corpus(path, ds, tokenizer="char", encoding="gpt2", val_fraction=0.1)
    train_stat = (ds / "train.bin").stat()
    again = prepare_corpus(path, ds, tokenizer="char", encoding="gpt2", val_fraction=0.1)
    assert again == first
    assert (ds / "train.bin").stat().st_ino == train_stat.st_ino  # not rewritten

    changed = prepare_corpus(path, ds, tokenizer="char", encoding="gpt2", val_fraction=0.2)
    assert (changed.val_tokens or 0) > (first.val_tokens or 0) > 0
    assert json.loads((ds / STAMP_FILENAME).read_text())["val_fraction"] == 0.2

    path.write_text(SPEECH * 6, encoding="utf-8")
    grown = prepare_corpus(path, ds, tokenizer="char", encoding="gpt2", val_fraction=0.2)
    assert (grown.train_tokens or 0) > (changed.train_tokens or 0) > 0
    assert grown.source_sha256 != changed.source_sha256

    (ds / "val.bin").write_bytes(b"\x00\x00")  # damaged output -> not up to date
    repaired = prepare_corpus(path, ds, tokenizer="char", encoding="gpt2", val_fraction=0.2)
    assert (ds / "val.bin").stat().st_size == (repaired.val_tokens or 0) * 2 > 0


def test_failed_run_keeps_previous_outputs(tmp_path: Path) -> None:
    path = _write(tmp_path, SPEECH * 5)
    ds = tmp_path / "ds"
    prepare_corpus(path, ds, tokenizer="tiktoken", encoding="gpt2", val_fraction=0.1)
    before = (ds / "train.bin").read_bytes()
    meta_before = (ds / "meta.json").read_bytes()
    path.write_bytes((SPEECH * 5).encode("utf-8") + b"\xff")
    with pytest.raises(DataError, match="invalid UTF-8"):
        prepare_corpus(path, ds, tokenizer="tiktoken", encoding="gpt2", val_fraction=0.1)
    assert (ds / "train.bin").read_bytes() == before
    assert (ds / "meta.json").read_bytes() == meta_before
    visible = sorted(p.name for p in ds.iterdir() if not p.name.startswith("."))
    assert visible == sorted(["train.bin", "val.bin", "meta.json"])
    assert not list(ds.glob("*.tmp"))
    (ds / ".train.bin.killed.tmp").write_bytes(b"left by a killed run")
    path.write_text(SPEECH * 5, encoding="utf-8")
    prepare_corpus(path, ds, tokenizer="tiktoken", encoding="gpt2", val_fraction=0.1)
    assert not (ds / ".train.bin.killed.tmp").exists()
