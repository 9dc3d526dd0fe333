"""Dataset consistency, checked before training and before `make prepare` calls a dataset up to date:
the token files are those the metadata describes, their ids fit its vocabulary, and the metadata
fits its tokenizer.

A split is one token file or, for a dataset prepared from documents, the shards meta.json lists.
Each token file must exist and be readable; hold exactly the token count the metadata records
(size = count x dtype width: a file cut short or from another preparation is refused); match the
sha256 it records (metadata from before token-file hashes has none); hold more than block_size
tokens; and hold only ids below `vocab_size`. The largest id and the sha256 come from one streaming
pass, cached beside the file in `.<name>.scan.json` and keyed by everything the result depends on:
the file's size, mtime, ctime, inode and device, and the dtype it is read as. A folder that cannot
be written just goes without the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from ml_playground.atomic import write_text_atomic
from ml_playground.config import DataConfig
from ml_playground.data.meta import DatasetMeta, Shard
from ml_playground.errors import DataError
from ml_playground.tokenizers import tokenizer_from_meta

log = logging.getLogger(__name__)

Split = Literal["train", "val"]
_BLOCK_BYTES = 1 << 25  # 32 MiB per read


@dataclass(frozen=True, slots=True, kw_only=True)
class Scan:
    """What one pass over a token file finds."""

    max_id: int  # -1 when the file is empty
    sha256: str


def _cache_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.scan.json")


def _key(stat: os.stat_result, dtype: np.dtype[Any]) -> dict[str, object]:
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,  # changes on every write or rename, and cannot be set back
        "inode": stat.st_ino,
        "device": stat.st_dev,
        "dtype": dtype.str,
    }


def _cached(path: Path, key: dict[str, object]) -> Scan | None:
    try:
        raw: object = json.loads(_cache_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = cast("dict[str, object]", raw) if isinstance(raw, dict) else {}
    max_id, sha256 = record.get("max_id"), record.get("sha256")
    if record.get("key") != key or not isinstance(max_id, int) or not isinstance(sha256, str):
        return None
    return Scan(max_id=max_id, sha256=sha256)


def record_scan(path: Path, dtype: np.dtype[Any], scan: Scan) -> None:
    """Cache `scan` as the result for the file as it is now (a writer that computed it while writing)."""
    record = {"key": _key(path.stat(), dtype), "max_id": scan.max_id, "sha256": scan.sha256}
    try:
        write_text_atomic(_cache_path(path), json.dumps(record) + "\n")
    except OSError:
        log.debug("%s: cannot cache the scan of the token file", path)


def scan_tokens(path: Path, dtype: np.dtype[Any]) -> Scan:
    """The largest id and the sha256 of a token file, from the cache when the file is unchanged."""
    try:
        with path.open("rb") as handle:
            key = _key(os.fstat(handle.fileno()), dtype)
            cached = _cached(path, key)
            if cached is not None:
                return cached
            digest, largest = hashlib.sha256(), -1
            while block := handle.read(_BLOCK_BYTES - _BLOCK_BYTES % dtype.itemsize):
                digest.update(block)
                ids = np.frombuffer(block, dtype=dtype, count=len(block) // dtype.itemsize)
                largest = max(largest, int(ids.max())) if ids.size else largest
    except OSError as exc:
        raise DataError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None
    scan = Scan(max_id=largest, sha256=digest.hexdigest())
    record_scan(path, dtype, scan)
    return scan


def max_token_id(path: Path, dtype: np.dtype[Any]) -> int:
    """The largest id in a token file (-1 when empty)."""
    return scan_tokens(path, dtype).max_id


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenFile:
    """A token file and what the metadata records of it (None: not recorded)."""

    path: Path
    tokens: int | None
    sha256: str | None


def split_files(
    meta: DatasetMeta, meta_path: Path, *, train_path: Path, val_path: Path
) -> dict[Split, list[TokenFile]]:
    """Each split's token files, in order: the shards meta.json lists (beside it), else the one file
    of each split ([train.data]'s `train_bin` / `val_bin`)."""
    files: dict[Split, list[TokenFile]] = {}
    rows: tuple[tuple[Split, tuple[Shard, ...] | None, Path, int | None, str | None], ...] = (
        ("train", meta.train_shards, train_path, meta.train_tokens, meta.train_sha256),
        ("val", meta.val_shards, val_path, meta.val_tokens, meta.val_sha256),
    )
    for split, shards, path, tokens, sha256 in rows:
        if shards is None:
            files[split] = [TokenFile(path=path, tokens=tokens, sha256=sha256)]
        else:
            files[split] = [
                TokenFile(path=meta_path.with_name(shard.file), tokens=shard.tokens, sha256=shard.sha256)
                for shard in shards
            ]
    return files


def check_file(file: TokenFile, meta: DatasetMeta, *, meta_path: Path) -> int:
    """Fail with one line naming the file unless it holds what `meta` records of it (size, sha256,
    ids inside the vocabulary); returns its token count."""
    path, dtype = file.path, meta.numpy_dtype
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: token file not found (run `make prepare` first)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None
    if not path.is_file():
        raise DataError(f"{path}: not a file (a token file was expected; run `make prepare`)")
    if file.tokens is not None and size != file.tokens * dtype.itemsize:
        raise DataError(
            f"{path}: {size} bytes, but {meta_path} records {file.tokens} {meta.dtype} tokens "
            f"({file.tokens * dtype.itemsize} bytes); the file is cut short or comes from another preparation: "
            "run `make prepare` again"
        )
    if size % dtype.itemsize:
        raise DataError(f"{path}: size {size} is not a multiple of {dtype.itemsize} ({meta.dtype}, from {meta_path})")
    scan = scan_tokens(path, dtype)
    if file.sha256 is not None and scan.sha256 != file.sha256:
        raise DataError(
            f"{path}: content differs from the sha256 {meta_path} records; the file was changed or comes from "
            "another preparation: run `make prepare` again"
        )
    if scan.max_id >= meta.vocab_size:
        raise DataError(
            f"{path}: largest token id {scan.max_id} is outside the vocabulary of {meta_path} "
            f"(vocab_size {meta.vocab_size}); the token files and the metadata come from different "
            "preparations: run `make prepare` again"
        )
    return size // dtype.itemsize


def check_split(files: list[TokenFile], split: Split, meta: DatasetMeta, *, meta_path: Path, block_size: int) -> None:
    """Fail with one line naming the file unless every file of the split is what `meta` records
    and together they hold more than block_size tokens."""
    tokens = sum(check_file(file, meta, meta_path=meta_path) for file in files)
    if tokens <= block_size:
        where = files[0].path if len(files) == 1 else f"{meta_path}: the {split} split"
        raise DataError(
            f"{where}: {tokens} tokens, need more than block_size {block_size} "
            "(a longer corpus, a larger prepare.val_fraction or a smaller block_size)"
        )


def check_token_file(path: Path, split: Split, meta: DatasetMeta, *, meta_path: Path, block_size: int) -> None:
    """Fail with one line naming the file unless it is the `split` token file `meta` describes."""
    tokens, sha256 = (meta.train_tokens, meta.train_sha256) if split == "train" else (meta.val_tokens, meta.val_sha256)
    check_split(
        [TokenFile(path=path, tokens=tokens, sha256=sha256)], split, meta, meta_path=meta_path, block_size=block_size
    )


def check_dataset(data: DataConfig, meta: DatasetMeta) -> None:
    """Fail with one line naming the file when the dataset's parts do not fit together."""
    tokenizer_from_meta(meta, where=str(data.meta_path))
    for split, files in split_files(meta, data.meta_path, train_path=data.train_path, val_path=data.val_path).items():
        check_split(files, split, meta, meta_path=data.meta_path, block_size=data.block_size)
