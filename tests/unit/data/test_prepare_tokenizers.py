"""Preparation with a trained BPE and with a pretrained model's tokenizer: tokenizer.json beside
meta.json, named by sha256; the stamp; identity checks by the tokenizer's hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_playground.config import PrepareConfig
from ml_playground.config_loader import load_experiment_config
from ml_playground.data.meta import identity_difference, read_meta, text_sha256
from ml_playground.data.prepare import TokenizerChoice, prepare_corpus, prepare_dataset
from ml_playground.errors import ConfigError, DataError
from ml_playground.tokenizers import HuggingFaceTokenizer, tokenizer_from_meta
from tests.support.tiny_training import TEXT

CORPUS = TEXT * 4 + "Größe, Übermaß und 漢字.\n" * 10


def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def test_trained_bpe_dataset_decodes_to_the_corpus(tmp_path: Path) -> None:
    choice = TokenizerChoice(kind="bpe", vocab_size=300, special_tokens=("<|user|>",))
    meta = prepare_corpus(corpus(tmp_path), tmp_path / "ds", tokenizer=choice, val_fraction=0.1)
    saved = (tmp_path / "ds" / "tokenizer.json").read_text(encoding="utf-8")
    assert meta.kind == "bpe"
    assert meta.vocab_size == 300
    assert meta.tokenizer_sha256 == text_sha256(saved)
    on_disk = json.loads((tmp_path / "ds" / "meta.json").read_text(encoding="utf-8"))
    assert "tokenizer_json" not in on_disk
    assert on_disk["tokenizer_sha256"] == meta.tokenizer_sha256
    read = read_meta(tmp_path / "ds" / "meta.json")
    assert read.tokenizer_json == saved
    tokenizer = tokenizer_from_meta(read)
    ids = np.concatenate([np.fromfile(tmp_path / "ds" / name, dtype="<u2") for name in ("train.bin", "val.bin")])
    assert tokenizer.decode(ids.tolist()) == CORPUS
    assert tokenizer.eot_token == 0


def test_the_stamp_holds_the_bpe_settings(tmp_path: Path) -> None:
    source = corpus(tmp_path)
    first = prepare_corpus(
        source, tmp_path / "ds", tokenizer=TokenizerChoice(kind="bpe", vocab_size=300), val_fraction=0.1
    )
    again = prepare_corpus(
        source, tmp_path / "ds", tokenizer=TokenizerChoice(kind="bpe", vocab_size=300), val_fraction=0.1
    )
    assert again == first  # up to date: the same tokenizer.json, nothing trained again
    bigger = prepare_corpus(
        source, tmp_path / "ds", tokenizer=TokenizerChoice(kind="bpe", vocab_size=320), val_fraction=0.1
    )
    assert bigger.vocab_size == 320
    assert bigger.tokenizer_sha256 != first.tokenizer_sha256


def test_a_changed_tokenizer_json_is_refused(tmp_path: Path) -> None:
    prepare_corpus(
        corpus(tmp_path), tmp_path / "ds", tokenizer=TokenizerChoice(kind="bpe", vocab_size=300), val_fraction=0.1
    )
    path = tmp_path / "ds" / "tokenizer.json"
    path.write_text(path.read_text(encoding="utf-8") + " ", encoding="utf-8")
    with pytest.raises(DataError, match=r"tokenizer.json: sha256 \w+ differs from the \w+ that .*meta.json records"):
        read_meta(tmp_path / "ds" / "meta.json")
    path.unlink()
    with pytest.raises(DataError, match=r"tokenizer.json: not found; .*meta.json \(kind 'bpe'\) names it"):
        read_meta(tmp_path / "ds" / "meta.json")


def test_datasets_of_two_trained_tokenizers_differ(tmp_path: Path) -> None:
    source = corpus(tmp_path)
    a = prepare_corpus(source, tmp_path / "a", tokenizer=TokenizerChoice(kind="bpe", vocab_size=300), val_fraction=0.1)
    b = prepare_corpus(source, tmp_path / "b", tokenizer=TokenizerChoice(kind="bpe", vocab_size=310), val_fraction=0.1)
    difference = identity_difference(a, b, a_name="ckpt", b_name="meta.json", tokenizer_only=True)
    assert difference.startswith("ckpt and meta.json describe different datasets (tokenizer.json sha256 ")
    assert identity_difference(a, a, a_name="x", b_name="y") == ""


def test_pretrained_tokenizer_dataset(tmp_path: Path) -> None:
    source = corpus(tmp_path)
    trained = prepare_corpus(
        source, tmp_path / "a", tokenizer=TokenizerChoice(kind="bpe", vocab_size=300), val_fraction=0.1
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "tokenizer.json").write_text(str(trained.tokenizer_json), encoding="utf-8")
    choice = TokenizerChoice(kind="huggingface", tokenizer_from=str(model_dir))
    meta = prepare_corpus(source, tmp_path / "b", tokenizer=choice, val_fraction=0.1)
    assert meta.kind == "huggingface"
    assert meta.tokenizer_from == str(model_dir)
    # The same tokenizer.json is the same tokenizer, whichever way it came.
    assert identity_difference(trained, meta, a_name="a", b_name="b", tokenizer_only=True) == ""
    assert np.array_equal(
        np.fromfile(tmp_path / "a" / "train.bin", "<u2"), np.fromfile(tmp_path / "b" / "train.bin", "<u2")
    )
    assert isinstance(tokenizer_from_meta(read_meta(tmp_path / "b" / "meta.json")), HuggingFaceTokenizer)


CONFIG = """
[prepare]
dataset_dir = "{dataset}"
source = "{source}"
{keys}
"""


def test_prepare_config_keys(tmp_path: Path) -> None:
    source = corpus(tmp_path)

    def load(keys: str) -> object:
        text = CONFIG.format(dataset=tmp_path / "ds", source=source, keys=keys)
        (tmp_path / "cfg.toml").write_text(text, encoding="utf-8")
        return load_experiment_config(tmp_path / "cfg.toml").prepare

    prepare = load('tokenizer = "bpe"\nvocab_size = 300\ntokenizer_train_bytes = 1000')
    assert prepare is not None
    meta = prepare_dataset(prepare, experiment="test")  # type: ignore[arg-type]  # load returns object
    assert meta.kind == "bpe"
    assert meta.vocab_size == 300
    for keys, problem in [
        ('tokenizer = "bpe"', "vocab_size is required for tokenizer 'bpe'"),
        ("vocab_size = 300", "vocab_size is required for tokenizer 'bpe' and only read for it"),
        ('tokenizer = "huggingface"', "tokenizer_from is required for tokenizer 'huggingface'"),
        ('special_tokens = ["<|x|>"]', "special_tokens is only read for tokenizer 'bpe'"),
        ('tokenizer = "bpe"\nvocab_size = 100', "prepare.vocab_size: Input should be greater than or equal to 258"),
    ]:
        with pytest.raises(ConfigError, match=problem.replace("|", r"\|")):
            load(keys)


def test_a_document_corpus_with_a_trained_bpe(tmp_path: Path) -> None:
    """Documents end with the trained BPE's <|endoftext|> (id 0); the shards decode to the documents."""
    docs = [f"Dokument {i}: Größe, Übermaß und {'Wörter ' * (i % 7)}Ende." for i in range(40)]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = PrepareConfig(
        dataset_dir=tmp_path / "ds",
        source=str(tmp_path / "corpus"),
        tokenizer="bpe",
        vocab_size=300,
        val_fraction=0.2,
        shard_tokens=500,
        workers=1,
    )
    meta = prepare_dataset(cfg, experiment="test")
    assert meta.kind == "bpe"
    assert (tmp_path / "ds" / "tokenizer.json").is_file()
    tokenizer = tokenizer_from_meta(read_meta(tmp_path / "ds" / "meta.json"))
    assert tokenizer.eot_token == 0
    ids: list[int] = []
    for shards in (meta.train_shards, meta.val_shards):
        assert shards is not None
        ids += np.concatenate([np.fromfile(tmp_path / "ds" / s.file, dtype=meta.numpy_dtype) for s in shards]).tolist()
    assert ids.count(0) == len(docs)  # one end-of-text per document
    texts = sorted(tokenizer.decode(piece) for piece in _pieces(ids))
    assert texts == sorted(docs)


def _pieces(ids: list[int]) -> list[list[int]]:
    pieces: list[list[int]] = []
    current: list[int] = []
    for token in ids:
        if token == 0:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    return pieces
