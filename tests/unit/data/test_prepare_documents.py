"""Document corpora: shards, whole-document splits, ids equal to tiktoken's, any number of workers,
resume after a failure, and training's checks of the shards."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ml_playground.config import DataConfig, PrepareConfig
from ml_playground.data import documents
from ml_playground.data import prepare as prepare_module
from ml_playground.data.checks import check_dataset
from ml_playground.data.documents import Document, Unit
from ml_playground.data.meta import DatasetMeta, read_meta
from ml_playground.data.prepare import is_val_document, prepare_dataset
from ml_playground.errors import DataError
from ml_playground.tokenizers import load_encoding
from tests.support.corpora import write_parquet

WORDS = ["the", "cat", "sat", "on", "a", "mat", "über", "naïve", "日本", "  ", "\n", "end."]


def _corpus(folder: Path, count: int = 120, seed: int = 0) -> list[str]:
    """`count` documents: the first half in a .jsonl file, the rest in a parquet file (small row groups)."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 80))) for _ in range(count)]
    folder.mkdir(parents=True, exist_ok=True)
    half = count // 2
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:half]), encoding="utf-8")
    write_parquet(folder / "b.parquet", {"text": docs[half:]}, row_group_size=16)
    return docs


def _config(tmp_path: Path, name: str = "ds", **keys: object) -> PrepareConfig:
    settings: dict[str, object] = {
        "dataset_dir": tmp_path / name,
        "source": str(tmp_path / "corpus"),
        "tokenizer": "tiktoken",
        "val_fraction": 0.2,
        "shard_tokens": 500,
        "workers": 1,
        **keys,
    }
    return PrepareConfig(**settings)  # type: ignore[arg-type]  # keys checked by pydantic at run time


def _split(ds: Path, meta: DatasetMeta, split: str) -> npt.NDArray[np.unsignedinteger[Any]]:
    shards = meta.train_shards if split == "train" else meta.val_shards
    assert shards is not None
    return np.concatenate([np.fromfile(ds / shard.file, dtype=meta.numpy_dtype) for shard in shards])


def test_shards_hold_each_document_and_its_end_of_text_as_tiktoken_encodes_it(tmp_path: Path) -> None:
    docs = _corpus(tmp_path / "corpus")
    meta = prepare_dataset(_config(tmp_path), experiment="x")
    enc = load_encoding("gpt2")
    expected: dict[str, list[int]] = {"train": [], "val": []}
    for i, doc in enumerate(docs):
        ordinal, row = (0, i + 1) if i < 60 else (1, i - 59)
        expected["val" if is_val_document(ordinal, row, 0.2) else "train"] += [*enc.encode_ordinary(doc), enc.eot_token]
    assert 0 < len(expected["val"]) < len(expected["train"])
    for split in ("train", "val"):
        assert _split(tmp_path / "ds", meta, split).tolist() == expected[split]
    assert meta.train_shards is not None
    assert all(shard.tokens == 500 for shard in meta.train_shards[:-1])
    assert 0 < meta.train_shards[-1].tokens <= 500
    assert meta.dtype == "uint16"


def test_the_output_is_bit_identical_for_any_number_of_workers(tmp_path: Path) -> None:
    _corpus(tmp_path / "corpus")
    one = prepare_dataset(_config(tmp_path, "one", workers=1), experiment="x")
    two = prepare_dataset(_config(tmp_path, "two", workers=2), experiment="x")
    assert one.to_dict() == two.to_dict()
    for split in ("train", "val"):
        assert _split(tmp_path / "one", one, split).tobytes() == _split(tmp_path / "two", two, split).tobytes()


def test_char_level_documents_are_joined_without_a_separator(tmp_path: Path) -> None:
    docs = _corpus(tmp_path / "corpus", count=40)
    meta = prepare_dataset(_config(tmp_path, tokenizer="char"), experiment="x")
    itos = meta.itos
    assert itos is not None
    assert itos == sorted(set("".join(docs)))
    ids: list[int] = _split(tmp_path / "ds", meta, "train").tolist()
    text = "".join(itos[i] for i in ids)
    train_docs = [d for i, d in enumerate(docs) if not is_val_document(*((0, i + 1) if i < 20 else (1, i - 19)), 0.2)]
    assert text == "".join(train_docs)


def test_training_reads_the_shards_and_refuses_one_that_does_not_match(tmp_path: Path) -> None:
    _corpus(tmp_path / "corpus")
    meta = prepare_dataset(_config(tmp_path), experiment="x")
    data = DataConfig(dataset_dir=tmp_path / "ds", block_size=8)
    check_dataset(data, read_meta(data.meta_path))
    assert meta.train_shards is not None
    shard = tmp_path / "ds" / meta.train_shards[1].file
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match=rf"^{shard}: 998 bytes, but .*meta\.json records 500 uint16 tokens"):
        check_dataset(data, read_meta(data.meta_path))


def test_a_failed_preparation_resumes_keeping_its_finished_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _corpus(tmp_path / "corpus")
    fresh = prepare_dataset(_config(tmp_path, "fresh"), experiment="x")
    real = documents.unit_documents
    calls = {"n": 0}

    def failing(unit: Unit, text_field: str) -> Iterator[Document]:
        calls["n"] += 1
        if calls["n"] == 4:  # of 5 units (1 .jsonl, 4 parquet row groups)
            raise DataError("injected failure")
        return real(unit, text_field)

    monkeypatch.setattr(prepare_module, "unit_documents", failing)
    with pytest.raises(DataError, match="injected failure"):
        prepare_dataset(_config(tmp_path), experiment="x")
    ds = tmp_path / "ds"
    assert not (ds / "meta.json").exists()
    assert not list(ds.glob(".*.tmp"))
    kept = {path.name: path.stat().st_ino for path in ds.glob("*-*.bin")}
    assert kept
    monkeypatch.setattr(prepare_module, "unit_documents", real)
    calls["n"] = 0
    resumed = prepare_dataset(_config(tmp_path), experiment="x")
    assert resumed.to_dict() == fresh.to_dict()
    assert all((ds / name).stat().st_ino == inode for name, inode in kept.items())  # not written again
    assert not (ds / ".prepare-progress.json").exists()


def test_a_new_corpus_replaces_the_old_shards_only_at_its_commit(tmp_path: Path) -> None:
    _corpus(tmp_path / "corpus")
    old = prepare_dataset(_config(tmp_path), experiment="x")
    _corpus(tmp_path / "corpus", seed=1)
    new = prepare_dataset(_config(tmp_path), experiment="x")
    assert new.train_sha256 != old.train_sha256
    assert sorted(p.name for p in (tmp_path / "ds").glob("*.bin")) == sorted(
        shard.file for shards in (new.train_shards, new.val_shards) if shards for shard in shards
    )


def test_empty_and_too_small_document_corpora_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"corpus too small: the train split has 0 token\(s\) from 0 document\(s\)"):
        prepare_dataset(_config(tmp_path), experiment="x")
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": "only one document"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"the (val|train) split has 0 token\(s\) from 1 document\(s\)"):
        prepare_dataset(_config(tmp_path), experiment="x")
