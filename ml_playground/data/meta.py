"""Dataset metadata: how to decode `train.bin` / `val.bin` (meta.json, versioned), and the
dataset's identity: its tokenizer (kind, encoding, character table or the sha256 of its
tokenizer.json, vocabulary size), its token counts and the sha256 of each token file and of the corpus.

A tokenizer.json (kinds "bpe" and "huggingface") lies beside meta.json, which names it by sha256;
`read_meta` reads it into the metadata (`tokenizer_json`), and so a checkpoint's copy of the
metadata carries the tokenizer itself.

A dataset prepared from documents is sharded: `train_shards` / `val_shards` list each split's
token files in order (file name, token count, sha256); the split is their concatenation, its
`*_tokens` the sum and its `*_sha256` the sha256 of the shards' sha256s (`shards_sha256`), so
identity comparisons treat both layouts alike. Single-file datasets omit the shard keys.

meta.json is the commit record of a preparation: it is written last, so the counts and hashes it
names are those of complete token files. Version 1 files (no token-file hashes) are still read.

`read_meta` also accepts a legacy nanoGPT `meta.pkl` ({vocab_size, itos, stoi}), read through a
restricted unpickler that only admits plain containers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from ml_playground.atomic import write_text_atomic
from ml_playground.data.legacy_pickle import load_plain_pickle
from ml_playground.errors import DataError

META_VERSION = 2
META_FILENAME = "meta.json"
TOKENIZER_FILENAME = "tokenizer.json"

TokenKind = Literal["char", "tiktoken", "bpe", "huggingface"]
TOKEN_KINDS: tuple[TokenKind, ...] = ("char", "tiktoken", "bpe", "huggingface")
JSON_KINDS: tuple[TokenKind, ...] = ("bpe", "huggingface")  # kinds whose tokenizer is a tokenizer.json
TokenDType = Literal["uint16", "uint32"]


def dtype_for_vocab(vocab_size: int) -> TokenDType:
    """uint16 when every id fits, else uint32."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


@dataclass(frozen=True, slots=True, kw_only=True)
class Shard:
    """One token file of a sharded split."""

    file: str  # a name inside the dataset folder
    tokens: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "tokens": self.tokens, "sha256": self.sha256}


def shards_sha256(shards: Sequence[Shard]) -> str:
    """A split's identity from its shards: the sha256 of their sha256s, in order."""
    return hashlib.sha256("".join(f"{shard.sha256}\n" for shard in shards).encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetMeta:
    """What a prepared dataset holds and how its ids decode."""

    version: int = META_VERSION
    kind: TokenKind
    vocab_size: int
    dtype: TokenDType
    encoding: str | None = None  # tiktoken encoding name (kind "tiktoken")
    itos: list[str] | None = None  # id -> character (kind "char")
    tokenizer_sha256: str | None = None  # of the tokenizer.json (kinds "bpe" and "huggingface")
    tokenizer_json: str | None = None  # its text: in memory and in checkpoints, not in meta.json
    tokenizer_from: str | None = None  # kind "huggingface": the directory or hub id it came from
    train_tokens: int | None = None  # None: not recorded (a metadata built in code, not prepared)
    val_tokens: int | None = None
    source_sha256: str | None = None  # the corpus
    train_sha256: str | None = None  # the token files, as written
    val_sha256: str | None = None
    train_shards: tuple[Shard, ...] | None = None  # None: one file per split (train.bin, val.bin)
    val_shards: tuple[Shard, ...] | None = None

    @property
    def numpy_dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        """Little-endian numpy dtype of the token files."""
        return np.dtype("<u2") if self.dtype == "uint16" else np.dtype("<u4")

    def to_dict(self) -> dict[str, Any]:
        shards = {
            key: [shard.to_dict() for shard in value]
            for key, value in (("train_shards", self.train_shards), ("val_shards", self.val_shards))
            if value is not None
        }
        return {
            "version": self.version,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype,
            "encoding": self.encoding,
            "itos": None if self.itos is None else list(self.itos),
            "tokenizer_sha256": self.tokenizer_sha256,
            "tokenizer_json": self.tokenizer_json,
            "tokenizer_from": self.tokenizer_from,
            "train_tokens": self.train_tokens,
            "val_tokens": self.val_tokens,
            "source_sha256": self.source_sha256,
            "train_sha256": self.train_sha256,
            "val_sha256": self.val_sha256,
            **shards,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "dataset metadata") -> DatasetMeta:
        """Validate a dict (from meta.json or a checkpoint); errors name `where` and the key."""
        return _parse(data, where)


def _parse(data: object, where: str) -> DatasetMeta:
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    d: dict[str, Any] = {str(k): v for k, v in cast("dict[object, object]", data).items()}
    problems: list[str] = []
    unknown = sorted(set(d) - set(DatasetMeta.__slots__))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}")

    def need_int(key: str, minimum: int) -> int:
        value = d.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            problems.append(f"{key}: expected an integer >= {minimum}, got {value!r}")
            return minimum
        return value

    def optional_int(key: str) -> int | None:
        return None if d.get(key) is None else need_int(key, 0)

    def optional_str(key: str) -> str | None:
        value = d.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
            return None
        return value

    version = need_int("version", 1)
    if version > META_VERSION:
        problems.append(f"version: {version} is newer than this code understands ({META_VERSION})")
    vocab_size = need_int("vocab_size", 1)
    train_tokens = optional_int("train_tokens")
    val_tokens = optional_int("val_tokens")
    kind = d.get("kind")
    if kind not in TOKEN_KINDS:
        problems.append(f"kind: expected one of {', '.join(map(repr, TOKEN_KINDS))}, got {kind!r}")
    dtype = d.get("dtype")
    if dtype not in ("uint16", "uint32"):
        problems.append(f"dtype: expected 'uint16' or 'uint32', got {dtype!r}")
    elif dtype == "uint16" and vocab_size > 2**16:
        problems.append(f"dtype: uint16 cannot hold vocab_size {vocab_size}")
    encoding = optional_str("encoding")
    itos_raw = d.get("itos")
    itos: list[str] | None = None
    if itos_raw is not None:
        entries = cast("list[object]", itos_raw) if isinstance(itos_raw, list) else None
        if entries is not None and all(isinstance(c, str) for c in entries):
            itos = [str(c) for c in entries]
        else:
            problems.append("itos: expected a list of strings")
    if kind == "char" and itos is None:
        problems.append("itos: required for kind 'char'")
    if kind == "char" and itos is not None and len(itos) != vocab_size:
        problems.append(f"itos: has {len(itos)} entries but vocab_size is {vocab_size}")
    if kind == "tiktoken" and encoding is None:
        problems.append("encoding: required for kind 'tiktoken'")
    source_sha256, train_sha256, val_sha256 = (optional_str(f"{key}_sha256") for key in ("source", "train", "val"))
    train_shards = _shards(d, "train", train_tokens, problems)
    val_shards = _shards(d, "val", val_tokens, problems)
    tokenizer_sha256, tokenizer_json, tokenizer_from = (
        optional_str(key) for key in ("tokenizer_sha256", "tokenizer_json", "tokenizer_from")
    )
    if kind in JSON_KINDS and tokenizer_sha256 is None:
        problems.append(f"tokenizer_sha256: required for kind {kind!r}")
    if tokenizer_json is not None and tokenizer_sha256 is not None and text_sha256(tokenizer_json) != tokenizer_sha256:
        problems.append(f"tokenizer_json: its sha256 is not tokenizer_sha256 {tokenizer_sha256[:12]}")
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems))
    return DatasetMeta(
        version=version,
        kind=next(k for k in TOKEN_KINDS if k == kind),
        vocab_size=vocab_size,
        dtype="uint16" if dtype == "uint16" else "uint32",
        encoding=encoding,
        itos=itos,
        train_tokens=train_tokens,
        val_tokens=val_tokens,
        source_sha256=source_sha256,
        train_sha256=train_sha256,
        val_sha256=val_sha256,
        train_shards=train_shards,
        val_shards=val_shards,
        tokenizer_sha256=tokenizer_sha256,
        tokenizer_json=tokenizer_json,
        tokenizer_from=tokenizer_from,
    )


def _shards(d: dict[str, Any], split: str, total: int | None, problems: list[str]) -> tuple[Shard, ...] | None:
    """The `<split>_shards` list, validated (plain file names, counts summing to `<split>_tokens`)."""
    key = f"{split}_shards"
    raw = d.get(key)
    if raw is None:
        return None
    entries = cast("list[object]", raw) if isinstance(raw, list) else []
    shards: list[Shard] = []
    for i, entry in enumerate(entries):
        record = cast("dict[str, object]", entry) if isinstance(entry, dict) else {}
        file, tokens, sha256 = record.get("file"), record.get("tokens"), record.get("sha256")
        if (
            set(record) != {"file", "tokens", "sha256"}
            or not isinstance(file, str)
            or not file
            or Path(file).name != file
            or not isinstance(tokens, int)
            or isinstance(tokens, bool)
            or tokens < 0
            or not isinstance(sha256, str)
        ):
            problems.append(f"{key}[{i}]: expected {{file: a file name, tokens: an integer >= 0, sha256: a string}}")
            continue
        shards.append(Shard(file=file, tokens=tokens, sha256=sha256))
    if not entries:
        problems.append(f"{key}: expected a non-empty list of shards")
    elif len(shards) == len(entries) and total is not None and sum(s.tokens for s in shards) != total:
        problems.append(f"{key}: the shards hold {sum(s.tokens for s in shards)} tokens, {split}_tokens says {total}")
    return tuple(shards)


def text_sha256(text: str) -> str:
    """sha256 of a text's UTF-8 bytes (a tokenizer.json's identity)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_meta(path: Path, meta: DatasetMeta) -> None:
    """Write meta.json atomically; a tokenizer.json is named by its sha256, not copied in (the
    preparation writes it beside, before meta.json)."""
    fields = meta.to_dict()
    del fields["tokenizer_json"]
    write_text_atomic(path, json.dumps(fields, ensure_ascii=False, indent=2) + "\n")


def _with_tokenizer_json(meta: DatasetMeta, meta_path: Path) -> DatasetMeta:
    """`meta` holding the tokenizer.json beside `meta_path`, checked against the recorded sha256."""
    path = meta_path.with_name(TOKENIZER_FILENAME)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: not found; {meta_path} (kind {meta.kind!r}) names it: run `make prepare`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the tokenizer ({exc})") from None
    if text_sha256(text) != meta.tokenizer_sha256:
        raise DataError(
            f"{path}: sha256 {text_sha256(text)[:12]} differs from the {str(meta.tokenizer_sha256)[:12]} that "
            f"{meta_path} records: the tokenizer changed after preparation; run `make prepare` again"
        )
    return replace(meta, tokenizer_json=text)


def _legacy_meta(path: Path) -> DatasetMeta:
    loaded = load_plain_pickle(path)
    raw = cast("dict[object, object]", loaded) if isinstance(loaded, dict) else {}
    vocab_size = raw.get("vocab_size")
    itos_map = cast("dict[object, object]", raw["itos"]) if isinstance(raw.get("itos"), dict) else None
    if not isinstance(vocab_size, int) or itos_map is None:
        raise DataError(f"{path}: expected a nanoGPT meta dict with vocab_size (int) and itos (id -> character)")
    itos: list[str] = []
    for i in range(vocab_size):
        char = itos_map.get(i)
        if not isinstance(char, str):
            raise DataError(f"{path}: itos: id {i} is missing or not a string")
        itos.append(char)
    dtype = dtype_for_vocab(vocab_size)
    width = 2 if dtype == "uint16" else 4

    def tokens_in(name: str) -> int:
        bin_path = path.with_name(name)
        return bin_path.stat().st_size // width if bin_path.is_file() else 0

    return _parse(
        {
            "version": META_VERSION,
            "kind": "char",
            "vocab_size": vocab_size,
            "dtype": dtype,
            "itos": itos,
            "train_tokens": tokens_in("train.bin"),
            "val_tokens": tokens_in("val.bin"),
        },
        str(path),
    )


def read_meta(path: Path) -> DatasetMeta:
    """Read meta.json, or a legacy nanoGPT meta.pkl (by suffix)."""
    if not path.is_file():
        hint = ""
        other = path.with_name("meta.json" if path.suffix == ".pkl" else "meta.pkl")
        if other.is_file():
            hint = f"; {other.name} exists beside it: set train.data.meta_pkl = {other.name!r}"
        raise DataError(
            f"{path}: dataset metadata not found (train.data.meta_pkl names the metadata file: our meta.json "
            f"or a legacy nanoGPT meta.pkl; run `make prepare` first){hint}"
        )
    if path.suffix == ".pkl":
        return _legacy_meta(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the dataset metadata ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    meta = _parse(data, str(path))
    return _with_tokenizer_json(meta, path) if meta.kind in JSON_KINDS and meta.tokenizer_json is None else meta


def _tokenizer_difference(a: DatasetMeta, b: DatasetMeta) -> str:
    """How a's tokenizer differs from b's ("" when every id decodes alike)."""
    # A tokenizer.json is the same tokenizer whether trained here or a pretrained model's.
    both_json = a.kind in JSON_KINDS and b.kind in JSON_KINDS
    if not both_json and (a.kind, a.encoding) != (b.kind, b.encoding):
        return f"tokenizer {a.encoding or a.kind} vs {b.encoding or b.kind}"
    if a.tokenizer_sha256 != b.tokenizer_sha256:
        return f"tokenizer.json sha256 {str(a.tokenizer_sha256)[:12]} vs {str(b.tokenizer_sha256)[:12]}"
    if a.vocab_size != b.vocab_size:
        return f"vocab_size {a.vocab_size} vs {b.vocab_size}"
    pairs = enumerate(zip(a.itos or [], b.itos or [], strict=False))
    first = next(((i, x, y) for i, (x, y) in pairs if x != y), None)
    if first is not None:
        return f"token {first[0]} is {first[1]!r} vs {first[2]!r}"
    return ""


def _data_difference(a: DatasetMeta, b: DatasetMeta) -> str:
    """How a's token files differ from b's, judged by what both record ("" when they agree)."""
    for key in ("train_tokens", "val_tokens", "train_sha256", "val_sha256", "source_sha256"):
        mine, theirs = getattr(a, key), getattr(b, key)
        if mine is not None and theirs is not None and mine != theirs:
            shown = (mine[:12], theirs[:12]) if key.endswith("sha256") else (mine, theirs)
            return f"{key} {shown[0]} vs {shown[1]}"
    return ""


def identity_difference(
    a: DatasetMeta, b: DatasetMeta, *, a_name: str, b_name: str, tokenizer_only: bool = False
) -> str:
    """One line saying how two datasets' identities differ, or "" when they are the same dataset.

    The identity is the tokenizer (kind, encoding, character table or tokenizer.json sha256,
    vocabulary size) and, unless
    `tokenizer_only`, the data: token counts and sha256 of the token files and of the corpus, each
    compared where both record it (older metadata lacks the token-file hashes). Sampling and
    fine-tuning on other data need only the tokenizer; a resume needs the same data too."""
    difference = _tokenizer_difference(a, b) or ("" if tokenizer_only else _data_difference(a, b))
    if not difference:
        return ""
    return f"{a_name} and {b_name} describe different datasets ({difference})"
