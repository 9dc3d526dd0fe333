"""Shard files of a document corpus's splits, and the record that lets a killed preparation resume.

A split's tokens go into files of exactly `shard_tokens` tokens (the last holds the rest), named
`<split>-<key>-<index>.bin`, where the key is a hash of the preparation's input and settings: a new
preparation never writes over the shards of the dataset meta.json still names, which stays whole
until the new meta.json replaces it. Each shard is written to a temp file, fsynced and renamed;
then `.prepare-progress.json` records it (file, tokens, sha256) with the position in the corpus
where the next shard of its split starts (a unit of work and the tokens of that unit already
written). A preparation started again with the same key keeps the recorded shards that still
verify (size and sha256) and starts at the earliest position the two splits need.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import numpy as np
import numpy.typing as npt

from ml_playground.atomic import atomic_binary_writer, write_text_atomic
from ml_playground.data.checks import Scan, record_scan, scan_tokens
from ml_playground.data.meta import DatasetMeta, Shard
from ml_playground.errors import DataError

log = logging.getLogger(__name__)

Split = Literal["train", "val"]
SPLITS: tuple[Split, ...] = ("train", "val")
PROGRESS_FILENAME = ".prepare-progress.json"
_SHARD_NAME = re.compile(r"^(train|val)-[0-9a-f]{12}-[0-9]{5}\.bin$")


def is_shard_name(name: str) -> bool:
    return _SHARD_NAME.match(name) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed:
    """A finished shard and where its split continues: unit `next_unit`, after `next_skip` of its tokens."""

    shard: Shard
    next_unit: int
    next_skip: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.shard.to_dict(), "next_unit": self.next_unit, "next_skip": self.next_skip}


def resume_point(closed: list[Closed]) -> tuple[int, int]:
    """(unit, tokens of it already written) where a split continues."""
    return (closed[-1].next_unit, closed[-1].next_skip) if closed else (0, 0)


def load_progress(dataset_dir: Path, key: str, dtype: np.dtype[Any]) -> dict[Split, list[Closed]]:
    """The shards a former run with the same key finished, each checked against its record (a shard
    that fails, and every later one of its split, is dropped)."""
    done: dict[Split, list[Closed]] = {split: [] for split in SPLITS}
    try:
        raw: object = json.loads((dataset_dir / PROGRESS_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return done
    record = cast("dict[str, Any]", raw) if isinstance(raw, dict) else {}
    if record.get("key") != key:
        return done
    for split in SPLITS:
        for entry in cast("list[dict[str, Any]]", record.get(split, [])):
            try:
                shard = Shard(file=str(entry["file"]), tokens=int(entry["tokens"]), sha256=str(entry["sha256"]))
                closed = Closed(shard=shard, next_unit=int(entry["next_unit"]), next_skip=int(entry["next_skip"]))
            except (KeyError, TypeError, ValueError):
                break
            if not _verifies(dataset_dir / shard.file, shard, dtype):
                log.info("%s: does not match the progress record; preparing it again", shard.file)
                break
            done[split].append(closed)
    kept = sum(len(shards) for shards in done.values())
    if kept:
        log.info("resuming %s: %d finished shard(s) kept", dataset_dir, kept)
    return done


def _verifies(path: Path, shard: Shard, dtype: np.dtype[Any]) -> bool:
    if not is_shard_name(shard.file) or not path.is_file() or path.stat().st_size != shard.tokens * dtype.itemsize:
        return False
    try:
        return scan_tokens(path, dtype).sha256 == shard.sha256
    except DataError:
        return False


def write_progress(dataset_dir: Path, key: str, done: dict[Split, list[Closed]]) -> None:
    record: dict[str, object] = {"key": key}
    for split in SPLITS:
        record[split] = [closed.to_dict() for closed in done[split]]
    write_text_atomic(dataset_dir / PROGRESS_FILENAME, json.dumps(record, indent=1) + "\n")


class ShardWriter:
    """Appends one split's tokens, unit by unit, to shard files of `shard_tokens` tokens; each shard
    is installed (fsynced, renamed) and appended to `closed` when full, then `on_close` runs."""

    def __init__(
        self,
        dataset_dir: Path,
        split: Split,
        *,
        key: str,
        shard_tokens: int,
        dtype: np.dtype[Any],
        closed: list[Closed],
        on_close: Callable[[], None],
    ) -> None:
        self.dataset_dir, self.split, self.key = dataset_dir, split, key
        self.shard_tokens, self.dtype = shard_tokens, dtype
        self.closed = closed
        self.on_close = on_close
        self._current: tuple[contextlib.ExitStack, BinaryIO] | None = None  # the shard being written
        self._count = 0
        self._digest = hashlib.sha256()
        self._largest = -1

    def _name(self) -> str:
        return f"{self.split}-{self.key}-{len(self.closed):05d}.bin"

    def _open(self) -> tuple[contextlib.ExitStack, BinaryIO]:
        if self._current is None:
            stack = contextlib.ExitStack()
            self._current = stack, stack.enter_context(atomic_binary_writer(self.dataset_dir / self._name()))
        return self._current

    def add(self, ids: npt.NDArray[Any], *, unit: int, skipped: int) -> None:
        """Append unit `unit`'s tokens of this split, of which `skipped` were written before `ids`."""
        pos = 0
        while pos < len(ids):
            take = min(self.shard_tokens - self._count, len(ids) - pos)
            data = ids[pos : pos + take].tobytes()
            self._open()[1].write(data)
            self._digest.update(data)
            self._largest = max(self._largest, int(ids[pos : pos + take].max()))
            self._count += take
            pos += take
            if self._count == self.shard_tokens:
                more = pos < len(ids)
                self._close(next_unit=unit if more else unit + 1, next_skip=skipped + pos if more else 0)

    def finish(self, units: int) -> list[Shard]:
        """Install the last, partial shard; the split's shards in order."""
        if self._count:
            self._close(next_unit=units, next_skip=0)
        return [closed.shard for closed in self.closed]

    def _close(self, *, next_unit: int, next_skip: int) -> None:
        stack, out = self._open()
        out.flush()
        os.fsync(out.fileno())
        path = self.dataset_dir / self._name()
        stack.close()  # renames the temp file into place
        shard = Shard(file=path.name, tokens=self._count, sha256=self._digest.hexdigest())
        record_scan(path, self.dtype, Scan(max_id=self._largest, sha256=shard.sha256))
        self.closed.append(Closed(shard=shard, next_unit=next_unit, next_skip=next_skip))
        self._current = None
        self._count, self._digest, self._largest = 0, hashlib.sha256(), -1
        self.on_close()

    def abandon(self) -> None:
        """Drop the shard being written: its temp file goes (an atomic writer left by an exception)."""
        if self._current is not None:
            stop = DataError("preparation stopped")
            self._current[0].__exit__(DataError, stop, None)
            self._current = None


def remove_superseded(dataset_dir: Path, meta: DatasetMeta) -> None:
    """After a commit: the token files of an earlier dataset in this folder (shards meta.json does not
    name; train.bin / val.bin when it is sharded), their scan caches and the progress record."""
    keep = {shard.file for shards in (meta.train_shards, meta.val_shards) if shards is not None for shard in shards}
    doomed = [path for path in dataset_dir.iterdir() if is_shard_name(path.name) and path.name not in keep]
    if meta.train_shards is not None:
        doomed += [dataset_dir / "train.bin", dataset_dir / "val.bin"]
    for path in doomed:
        path.unlink(missing_ok=True)
        path.with_name(f".{path.name}.scan.json").unlink(missing_ok=True)
    (dataset_dir / PROGRESS_FILENAME).unlink(missing_ok=True)
