"""The tokenizer.json kinds: a byte-level BPE trained on the corpus ("bpe") and a pretrained model's
("huggingface"), checked against transformers' AutoTokenizer; and every kind's bytes per token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tokenizers
from tokenizers import AddedToken, processors
from transformers import AutoTokenizer

from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import DataError
from ml_playground.tokenizers import (
    ENDOFTEXT,
    CharTokenizer,
    HuggingFaceTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    bpe_training_sample,
    meta_of,
    pretrained_tokenizer_json,
    tokenizer_from_meta,
    train_bpe,
)

CORPUS = [
    "Sehr geehrte Damen und Herren, die Größe der Übermäßigkeit ärgert Öl-Ölförderer.\n" * 20,
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n" * 20,
    "Numbers 12345 and 2024-01-01, it's we'll they've; emoji 🎉🚀 and CJK 漢字.\n\n  spaces\ttabs\r\n" * 10,
]
TEXT = "Die Größe! ROMEO:\nBut, soft 12345 🎉 漢字 it's  two  spaces\n\n\tend"


@pytest.fixture(scope="module")
def trained() -> HuggingFaceTokenizer:
    return train_bpe(CORPUS, vocab_size=400, special_tokens=["<|user|>"], max_bytes=1 << 20)


def test_trained_bpe_layout_and_round_trip(trained: HuggingFaceTokenizer) -> None:
    assert trained.kind == "bpe"
    assert trained.vocab_size == 400
    assert trained.eot_token == 0  # <|endoftext|> first, then the given special tokens
    assert trained.backend.token_to_id("<|user|>") == 1
    ids = trained.encode(TEXT)
    assert trained.decode(ids) == TEXT  # byte-level: any text, nothing unknown
    assert len(ids) < len(TEXT.encode("utf-8"))  # merges were learned
    assert trained.encode_array(TEXT).tolist() == ids


def test_trained_bpe_splits_like_gpt4(trained: HuggingFaceTokenizer) -> None:
    # The pre-tokenizer splits digits in threes and keeps a newline run apart from the next word.
    pieces = [piece for piece, _ in trained.backend.pre_tokenizer.pre_tokenize_str("12345\n\nword")]
    assert pieces == ["123", "45", "ĊĊ", "word"]


def test_training_reads_a_bounded_sample() -> None:
    sample = list(bpe_training_sample(["abc", "dé", "never read"], max_bytes=5))
    assert sample == ["abc", "d"]  # é's two bytes would pass the bound: cut at the character
    assert list(bpe_training_sample(["abc"], max_bytes=100)) == ["abc"]


def test_too_small_a_vocabulary_is_refused() -> None:
    with pytest.raises(DataError, match=r"prepare.vocab_size: 256 is too small"):
        train_bpe(CORPUS, vocab_size=256, max_bytes=1000)


def test_trained_bpe_equals_transformers(trained: HuggingFaceTokenizer, tmp_path: Path) -> None:
    trained.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    reference: Any = AutoTokenizer.from_pretrained(str(tmp_path))  # pyright: ignore[reportUnknownVariableType]  # untyped
    assert trained.encode(TEXT) == reference(TEXT)["input_ids"]
    assert trained.decode(trained.encode(TEXT)) == reference.decode(reference(TEXT)["input_ids"])


def llama_style_dir(trained: HuggingFaceTokenizer, folder: Path) -> Path:
    """A pretrained model's tokenizer folder, Llama 3 style: a BOS token its post-processor adds."""
    tokenizer = tokenizers.Tokenizer.from_str(trained.backend.to_str())
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ("<|begin_of_text|>", "<|end_of_text|>")])
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    folder.mkdir(parents=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_pretrained_tokenizer_equals_transformers(trained: HuggingFaceTokenizer, tmp_path: Path) -> None:
    folder = llama_style_dir(trained, tmp_path / "llama")
    text, where = pretrained_tokenizer_json(str(folder))
    ours = HuggingFaceTokenizer.from_json(text, kind="huggingface", where=where)
    reference: Any = AutoTokenizer.from_pretrained(str(folder))  # pyright: ignore[reportUnknownVariableType]  # untyped
    assert ours.encode(TEXT) == reference(TEXT)["input_ids"]  # with the BOS token, as transformers adds
    assert ours.encode_array(TEXT).tolist() == reference(TEXT, add_special_tokens=False)["input_ids"]
    assert ours.eot_token == reference.convert_tokens_to_ids(ENDOFTEXT)  # the trained BPE's, found first
    assert ours.token_bytes()[reference.convert_tokens_to_ids("<|begin_of_text|>")] == 0


def test_a_missing_pretrained_tokenizer_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"prepare.tokenizer_from: .*tokenizer.json: cannot read the tokenizer"):
        pretrained_tokenizer_json(str(tmp_path / "empty"))


def test_meta_rebuilds_the_tokenizer(trained: HuggingFaceTokenizer) -> None:
    meta = meta_of(trained)
    assert meta.kind == "bpe"
    assert meta.tokenizer_json is not None
    assert meta.tokenizer_sha256 is not None
    again = tokenizer_from_meta(DatasetMeta.from_dict(meta.to_dict()))  # as a checkpoint carries it
    assert again.encode(TEXT) == trained.encode(TEXT)
    edited = meta.to_dict() | {"tokenizer_json": meta.tokenizer_json.replace('"<|user|>"', '"<|usr|>"')}
    with pytest.raises(DataError, match="tokenizer_json: its sha256 is not tokenizer_sha256"):
        DatasetMeta.from_dict(edited)


def every_kind(trained: HuggingFaceTokenizer) -> list[Tokenizer]:
    text = "".join(CORPUS) + TEXT
    return [CharTokenizer(sorted(set(text))), TiktokenTokenizer("gpt2"), TiktokenTokenizer("cl100k_base"), trained]


@pytest.mark.parametrize("which", range(4), ids=["char", "gpt2", "cl100k_base", "bpe"])
def test_token_bytes_add_up_to_the_text(trained: HuggingFaceTokenizer, which: int) -> None:
    tokenizer = every_kind(trained)[which]
    lengths = tokenizer.token_bytes()
    assert lengths.shape == (tokenizer.vocab_size,)
    for text in [*CORPUS, TEXT]:
        assert int(lengths[np.array(tokenizer.encode(text), dtype=np.int64)].sum()) == len(text.encode("utf-8"))
    if tokenizer.eot_token is not None:
        assert lengths[tokenizer.eot_token] == 0  # special tokens stand for no text


def test_sentencepiece_style_bytes() -> None:
    vocab = {"<unk>": 0, "</s>": 1, "<0x41>": 2, "\u2581the": 3, "é": 4}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens([AddedToken("</s>", special=True)])
    tokenizer = HuggingFaceTokenizer(backend, kind="huggingface", where="test")
    assert tokenizer.token_bytes().tolist() == [5, 0, 1, 4, 2]  # "<unk>" is not special here: its 5 bytes
    assert tokenizer.eot_token == 1


def test_a_vocabulary_the_text_cannot_fill_is_refused() -> None:
    with pytest.raises(DataError, match=r"prepare.vocab_size: 6 bytes of text give only \d+ tokens, not 4096"):
        train_bpe(["abcabc"], vocab_size=4096, max_bytes=1000)
