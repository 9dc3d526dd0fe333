"""Dataset consistency, checked before training: the token files' ids fit the metadata's vocabulary,
and the metadata fits its tokenizer.

Every id of train.bin/val.bin must be below `vocab_size` of the metadata file; otherwise the bins
and the metadata come from different preparations (or one was edited), and training would end
in an embedding lookup error. The largest id of a file is computed once (a streaming pass over
the memmap) and cached beside it in `.<name>.maxid.json`, keyed by the file's size and mtime;
a folder that cannot be written just goes without the cache.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ml_playground.atomic import write_text_atomic
from ml_playground.config import DataConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import DataError
from ml_playground.tokenizers import tokenizer_from_meta

log = logging.getLogger(__name__)

_CHUNK = 1 << 24  # ids per pass: 32 MiB of uint16


def _cache_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.maxid.json")


def _key(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _cached(path: Path) -> int | None:
    try:
        record: Any = json.loads(_cache_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != _key(path):
        return None
    value = record.get("max_id")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return value if isinstance(value, int) else None


def max_token_id(path: Path, dtype: np.dtype[Any]) -> int:
    """The largest id in a token file (-1 when empty), from the cache when the file is unchanged."""
    cached = _cached(path)
    if cached is not None:
        return cached
    tokens = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype=dtype)
    largest = -1
    for start in range(0, len(tokens), _CHUNK):
        largest = max(largest, int(tokens[start : start + _CHUNK].max()))
    try:
        write_text_atomic(_cache_path(path), json.dumps({"key": _key(path), "max_id": largest}) + "\n")
    except OSError:
        log.debug("%s: cannot cache the largest token id", path)
    return largest


def check_dataset(data: DataConfig, meta: DatasetMeta) -> None:
    """Fail with one line naming the file when the dataset's parts do not fit together."""
    tokenizer_from_meta(meta, where=str(data.meta_path))
    for path in (data.train_path, data.val_path):
        if not path.is_file() or path.stat().st_size % meta.numpy_dtype.itemsize:
            continue  # the batch source names a missing or torn file
        largest = max_token_id(path, meta.numpy_dtype)
        if largest >= meta.vocab_size:
            raise DataError(
                f"{path}: largest token id {largest} is outside the vocabulary of {data.meta_path} "
                f"(vocab_size {meta.vocab_size}); the token files and the metadata come from different "
                "preparations: run `make prepare` again"
            )
