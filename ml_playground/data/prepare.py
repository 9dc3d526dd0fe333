"""Corpus -> train.bin / val.bin / meta.json, streaming with bounded memory.

The corpus is read in blocks and cut only where BPE pre-tokenization splits anyway (a single
"\\n" between two printable ASCII characters), so encoding piece by piece gives exactly the ids of
encoding the whole split at once. The first (1 - val_fraction) of the bytes is the train split,
the rest the val split (cut at a character boundary), each encoded separately as nanoGPT does.

meta.json is the one commit point: both token files are written to temp files first; only when
both are complete does meta.json go (with the stamp), then the token files replace the old ones,
and meta.json comes back last, naming the token counts and sha256 of the new files. A preparation
killed or failing at any moment leaves the old dataset intact, the new one complete, or token
files without meta.json, which training refuses ("run `make prepare`"). A dataset folder sits
inside the user's corpus folder (input.txt, the download cache), so it cannot be swapped whole.

One preparation per dataset folder at a time (`.prepare.lock`, a kernel lock that dies with its
process); a stamp with the input's sha256 and the settings lets a re-run with the same input and
settings skip all work once the files pass the same checks training makes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from ml_playground.atomic import atomic_binary_writer, fsync_dir, write_text_atomic
from ml_playground.config import PrepareConfig
from ml_playground.data.checks import Scan, check_split, record_scan, split_files
from ml_playground.data.documents import (
    DEFAULT_CHUNK_BYTES,
    Unit,
    document_files,
    iter_documents,
    iter_text,
    plan_units,
    unit_documents,
)
from ml_playground.data.meta import (
    META_FILENAME,
    TOKENIZER_FILENAME,
    DatasetMeta,
    Shard,
    TokenKind,
    dtype_for_vocab,
    read_meta,
    shards_sha256,
    write_meta,
)
from ml_playground.data.shards import (
    PROGRESS_FILENAME,
    SPLITS,
    Closed,
    ShardWriter,
    Split,
    load_progress,
    remove_superseded,
    resume_point,
    write_progress,
)
from ml_playground.data.sources import file_sha256, resolve_input
from ml_playground.dir_lock import exclusive_lock
from ml_playground.errors import DataError
from ml_playground.progress import progress_bar
from ml_playground.tokenizers import (
    CharTokenizer,
    HuggingFaceTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    meta_of,
    pretrained_tokenizer_json,
    tokenizer_from_meta,
    train_bpe,
)

log = logging.getLogger(__name__)

PREPARE_FORMAT = 1
STAMP_FILENAME = ".prepare-stamp.json"
LOCK_FILENAME = ".prepare.lock"
TRAIN_FILENAME = "train.bin"
VAL_FILENAME = "val.bin"
_MIN_SPLIT_TOKENS = 2  # one (input, target) pair

# Writes the experiment's bundled corpus to the given path.
BundledCorpus = Callable[[Path], None]


def split_offset(path: Path, size: int, val_fraction: float) -> int:
    """Byte offset where the val split starts: (1 - val_fraction) of the file, at a char boundary."""
    cut = int(size * (1.0 - val_fraction))
    with path.open("rb") as handle:
        handle.seek(cut)
        following = handle.read(4)
    for byte in following:
        if (byte & 0xC0) != 0x80:
            break
        cut += 1
    return min(cut, size)


def char_vocabulary(path: Path, size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[str]:
    """Sorted set of characters in the corpus, read piece by piece."""
    seen = np.zeros(0x110000, dtype=bool)  # one flag per Unicode code point
    done = 0
    with progress_bar(size, "vocabulary", unit="B", unit_scale=True) as bar:
        for offset, text in iter_text(path, 0, size, chunk_bytes):
            seen[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)] = True
            bar.update(offset - done)
            done = offset
        bar.update(size - done)
    return [chr(point) for point in np.flatnonzero(seen).tolist()]


def _encode_pieces(
    pieces: Iterator[tuple[int, str]], tokenizer: Tokenizer, on_bytes: Callable[[int], object]
) -> Iterator[npt.NDArray[Any]]:
    """Encode pieces on one thread per core, in order, while this thread reads the next ones.

    tiktoken and numpy release the GIL while they work; at most 2 x threads + 1 pieces are in flight.
    """
    threads = os.cpu_count() or 1
    pending: deque[tuple[int, Future[npt.NDArray[Any]]]] = deque()

    def finished(keep: int) -> Iterator[npt.NDArray[Any]]:
        while len(pending) > keep:
            size, future = pending.popleft()
            yield future.result()
            on_bytes(size)

    with ThreadPoolExecutor(threads) as pool:
        for _offset, text in pieces:
            pending.append((len(text.encode("utf-8")), pool.submit(tokenizer.encode_array, text)))
            yield from finished(keep=2 * threads)
        yield from finished(keep=0)


def _write_split(
    out: BinaryIO,
    pieces: Iterator[tuple[int, str]],
    tokenizer: Tokenizer,
    dtype: np.dtype[Any],
    on_bytes: Callable[[int], object],
) -> tuple[int, Scan]:
    """Encode `pieces` and append the ids to `out`; returns the token count and what a scan of the
    written bytes would find (their sha256 and largest id)."""
    count, largest, digest = 0, -1, hashlib.sha256()
    for ids in _encode_pieces(pieces, tokenizer, on_bytes):
        data = ids.astype(dtype, copy=False).tobytes()
        out.write(data)
        digest.update(data)
        count += int(ids.size)
        largest = max(largest, int(ids.max())) if ids.size else largest
    return count, Scan(max_id=largest, sha256=digest.hexdigest())


def _stamp(input_sha256: str, tokenizer: TokenizerChoice, val_fraction: float) -> dict[str, Any]:
    return {
        "format": PREPARE_FORMAT,
        "input_sha256": input_sha256,
        "tokenizer": tokenizer.kind,
        "encoding": tokenizer.encoding if tokenizer.kind == "tiktoken" else None,
        **tokenizer.settings(),
        "val_fraction": val_fraction,
    }


def _up_to_date(dataset_dir: Path, stamp: dict[str, Any]) -> DatasetMeta | None:
    """The existing metadata when the stamp agrees with `stamp` and the token files (one per split,
    or the shards) pass training's checks; else None."""
    stamp_path = dataset_dir / STAMP_FILENAME
    meta_path = dataset_dir / META_FILENAME
    try:
        if json.loads(stamp_path.read_text(encoding="utf-8")) != stamp:
            return None
        meta = read_meta(meta_path)
        files = split_files(
            meta, meta_path, train_path=dataset_dir / TRAIN_FILENAME, val_path=dataset_dir / VAL_FILENAME
        )
        for split, of_split in files.items():
            check_split(of_split, split, meta, meta_path=meta_path, block_size=1)
    except (OSError, ValueError):
        return None
    except DataError as exc:
        log.info("%s; preparing again", exc)
        return None
    return meta


def _remove_stale_files(dataset_dir: Path) -> None:
    """Temp files a killed run left behind (atomic writers clean up only on exceptions); safe under
    the dataset's lock, which no other preparation holds."""
    for name in (TRAIN_FILENAME, VAL_FILENAME, META_FILENAME, STAMP_FILENAME, PROGRESS_FILENAME, "train-", "val-"):
        for stale in dataset_dir.glob(f".{name}*.tmp"):  # a shard's temp file: .train-<key>-<n>.bin.<random>.tmp
            stale.unlink(missing_ok=True)
        dataset_dir.joinpath(f".{name}.maxid.json").unlink(missing_ok=True)  # the cache's former name


@contextlib.contextmanager
def _preparing(dataset_dir: Path) -> Generator[None]:
    """Hold the dataset folder's lock (created when missing), or fail at once naming the holder;
    an OS error inside (full disk, unreadable corpus, unwritable folder) becomes one line."""

    def busy(holder: str) -> DataError:
        return DataError(
            f"{dataset_dir} is being prepared by {holder}; wait for it to end "
            "(a second `make prepare` then finds it up to date)"
        )

    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(dataset_dir / LOCK_FILENAME, busy):
            yield
    except OSError as exc:
        raise _os_failure(exc, dataset_dir) from None


def _os_failure(exc: OSError, dataset_dir: Path) -> DataError:
    """One line for an OS error while preparing, naming the file it concerns (the corpus, a folder),
    or the dataset folder for its own hidden files (temp files, the lock) and for writes."""
    where = Path(exc.filename) if isinstance(exc.filename, str | Path) else dataset_dir
    if where.parent == dataset_dir and where.name.startswith("."):
        where = dataset_dir
    return DataError(
        f"{where}: {exc.strerror or exc} while preparing {dataset_dir}: fix this and run `make prepare` again"
    )


def _retract(dataset_dir: Path) -> None:
    """Withdraw the commit record (meta.json) and the stamp before any token file is replaced."""
    (dataset_dir / STAMP_FILENAME).unlink(missing_ok=True)
    (dataset_dir / META_FILENAME).unlink(missing_ok=True)
    fsync_dir(dataset_dir)


def _commit(dataset_dir: Path, meta: DatasetMeta, stamp: dict[str, Any], scans: dict[str, Scan]) -> None:
    """meta.json names the installed token files (and the tokenizer.json); the stamp follows."""
    for name, scan in scans.items():
        record_scan(dataset_dir / name, meta.numpy_dtype, scan)
    if meta.tokenizer_json is not None:
        write_text_atomic(dataset_dir / TOKENIZER_FILENAME, meta.tokenizer_json)
    write_meta(dataset_dir / META_FILENAME, meta)
    write_text_atomic(dataset_dir / STAMP_FILENAME, json.dumps(stamp, indent=2) + "\n")
    remove_superseded(dataset_dir, meta)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizerChoice:
    """[prepare]'s tokenizer keys: which tokenizer encodes the corpus and how it is made."""

    kind: TokenKind = "char"
    encoding: str = "gpt2"  # tiktoken
    vocab_size: int | None = None  # bpe
    special_tokens: tuple[str, ...] = ()  # bpe
    train_bytes: int = 100_000_000  # bpe: how much of the train split it learns from
    tokenizer_from: str | None = None  # huggingface

    @classmethod
    def of(cls, cfg: PrepareConfig) -> TokenizerChoice:
        return cls(
            kind=cfg.tokenizer,
            encoding=cfg.encoding,
            vocab_size=cfg.vocab_size,
            special_tokens=cfg.special_tokens,
            train_bytes=cfg.tokenizer_train_bytes,
            tokenizer_from=cfg.tokenizer_from,
        )

    def settings(self) -> dict[str, Any]:
        """What decides the ids besides the corpus, for the up-to-date stamp (empty for char and tiktoken)."""
        if self.kind == "bpe":
            return {
                "vocab_size": self.vocab_size,
                "special_tokens": list(self.special_tokens),
                "train_bytes": self.train_bytes,
            }
        if self.kind == "huggingface":
            return {"tokenizer_from": self.tokenizer_from}
        return {}


def _encoder(choice: TokenizerChoice, input_path: Path, split: int, size: int, chunk_bytes: int) -> Tokenizer:
    """The tokenizer of `choice`; a char vocabulary is the corpus's, a BPE is trained on the train split."""
    if choice.kind == "char":
        return CharTokenizer(char_vocabulary(input_path, size, chunk_bytes))
    if choice.kind == "tiktoken":
        return TiktokenTokenizer(choice.encoding)
    documents = (text for _offset, text in iter_text(input_path, 0, split, chunk_bytes))
    return _json_tokenizer(choice, documents, str(input_path))


def _json_tokenizer(choice: TokenizerChoice, documents: Iterator[str], corpus: str) -> HuggingFaceTokenizer:
    """A BPE trained on the first `train_bytes` of `documents`, or the pretrained model's tokenizer."""
    if choice.kind == "bpe":
        assert choice.vocab_size is not None  # PrepareConfig requires it for "bpe"
        log.info("training a BPE of %d tokens on up to %d bytes of %s", choice.vocab_size, choice.train_bytes, corpus)
        return train_bpe(
            documents, vocab_size=choice.vocab_size, special_tokens=choice.special_tokens, max_bytes=choice.train_bytes
        )
    assert choice.tokenizer_from is not None  # PrepareConfig requires it for "huggingface"
    text, where = pretrained_tokenizer_json(choice.tokenizer_from)
    return HuggingFaceTokenizer.from_json(text, kind="huggingface", where=where)


def _prepare_locked(
    input_path: Path,
    dataset_dir: Path,
    *,
    tokenizer: TokenizerChoice,
    val_fraction: float,
    chunk_bytes: int,
) -> DatasetMeta:
    try:
        size = input_path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{input_path}: corpus not found") from None
    if size == 0:
        raise DataError(f"{input_path}: corpus is empty")
    input_sha256 = file_sha256(input_path)
    stamp = _stamp(input_sha256, tokenizer, val_fraction)
    _remove_stale_files(dataset_dir)
    existing = _up_to_date(dataset_dir, stamp)
    if existing is not None:
        log.info("%s is up to date for %s; skipping", dataset_dir, input_path)
        return existing

    split = split_offset(input_path, size, val_fraction)
    encoder = _encoder(tokenizer, input_path, split, size, chunk_bytes)
    tokenizer_meta = meta_of(encoder, tokenizer_from=tokenizer.tokenizer_from)
    dtype, np_dtype = tokenizer_meta.dtype, tokenizer_meta.numpy_dtype
    with (
        progress_bar(size, "encode", unit="B", unit_scale=True) as bar,
        atomic_binary_writer(dataset_dir / TRAIN_FILENAME) as train_out,
        atomic_binary_writer(dataset_dir / VAL_FILENAME) as val_out,
    ):
        train_pieces = iter_text(input_path, 0, split, chunk_bytes)
        train_tokens, train_scan = _write_split(train_out, train_pieces, encoder, np_dtype, bar.update)
        val_pieces = iter_text(input_path, split, size, chunk_bytes)
        val_tokens, val_scan = _write_split(val_out, val_pieces, encoder, np_dtype, bar.update)
        for name, count in (("train", train_tokens), ("val", val_tokens)):
            if count < _MIN_SPLIT_TOKENS:
                raise DataError(
                    f"{input_path}: corpus too small: the {name} split has {count} token(s), "
                    f"need at least one training block (block_size + 1 tokens)"
                )
        for out in (train_out, val_out):  # on the disk before anything of the old dataset goes:
            out.flush()  # a full disk fails here, with the old dataset whole
            os.fsync(out.fileno())
        _retract(dataset_dir)  # leaving this block replaces val.bin, then train.bin
    meta = dataclasses.replace(
        tokenizer_meta,
        train_tokens=train_tokens,
        val_tokens=val_tokens,
        source_sha256=input_sha256,
        train_sha256=train_scan.sha256,
        val_sha256=val_scan.sha256,
    )
    _commit(dataset_dir, meta, stamp, {TRAIN_FILENAME: train_scan, VAL_FILENAME: val_scan})
    log.info(
        "prepared %s: %d train + %d val tokens (%s, vocab %d, %s)",
        dataset_dir,
        train_tokens,
        val_tokens,
        meta.kind,
        meta.vocab_size,
        dtype,
    )
    return meta


def prepare_corpus(
    input_path: Path,
    dataset_dir: Path,
    *,
    tokenizer: Literal["char", "tiktoken"] | TokenizerChoice,
    encoding: str = "gpt2",
    val_fraction: float,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> DatasetMeta:
    """Tokenize `input_path` into dataset_dir/{train.bin,val.bin,meta.json}; skip if up to date.
    `tokenizer` is a kind ("char", or "tiktoken" with `encoding`) or every tokenizer key."""
    choice = tokenizer if isinstance(tokenizer, TokenizerChoice) else TokenizerChoice(kind=tokenizer, encoding=encoding)
    with _preparing(dataset_dir):
        return _prepare_locked(
            input_path,
            dataset_dir,
            tokenizer=choice,
            val_fraction=val_fraction,
            chunk_bytes=chunk_bytes,
        )


def prepare_dataset(cfg: PrepareConfig, *, experiment: str, bundled: BundledCorpus | None = None) -> DatasetMeta:
    """The preparer every experiment shares: resolve [prepare].source, then tokenize it (one text as
    `prepare_corpus`, a document corpus in shards), all under the dataset folder's lock."""
    with _preparing(cfg.dataset_dir):
        if cfg.source == "bundled":
            if bundled is None:
                raise DataError(
                    f"prepare.source: experiment {experiment!r} has no bundled corpus; "
                    "set it to a UTF-8 text file path or an http(s):// URL"
                )
            input_path = cfg.dataset_dir / f"{experiment}_bundled.txt"
            bundled(input_path)
        elif (files := document_files(cfg.source)) is not None:
            return _prepare_documents_locked(files, cfg)
        else:
            input_path = resolve_input(
                cfg.source,
                cache=cfg.dataset_dir / "input.txt",
                timeout_s=cfg.download_timeout_s,
                sha256=cfg.source_sha256,
                fallback=cfg.fallback_source,
            )
        return _prepare_locked(
            input_path,
            cfg.dataset_dir,
            tokenizer=TokenizerChoice.of(cfg),
            val_fraction=cfg.val_fraction,
            chunk_bytes=DEFAULT_CHUNK_BYTES,
        )


# ---- document corpora: worker processes, shards, resume -------------------------------------------


def is_val_document(ordinal: int, row: int, val_fraction: float) -> bool:
    """Whether document (file `ordinal`, `row`) belongs to the val split: a hash of its identity,
    so the choice is reproducible and independent of units and workers."""
    digest = hashlib.blake2b(f"{ordinal}:{row}".encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


@dataclass(frozen=True, slots=True, kw_only=True)
class _Job:
    """What a worker needs for one unit; the tokenizer travels as its description (picklable)."""

    unit: Unit
    text_field: str
    tokenizer: DatasetMeta
    val_fraction: float


@dataclass(frozen=True, slots=True, kw_only=True)
class _Encoded:
    splits: dict[Split, npt.NDArray[Any]]
    documents: int


_worker_tokenizer: list[tuple[DatasetMeta, Tokenizer]] = []  # one per process, rebuilt when the description changes


def _tokenizer_in_worker(description: DatasetMeta) -> Tokenizer:
    if not _worker_tokenizer or _worker_tokenizer[0][0] != description:
        _worker_tokenizer[:] = [(description, tokenizer_from_meta(description))]
    return _worker_tokenizer[0][1]


def _encode_unit(job: _Job) -> _Encoded:
    """A unit's documents as token ids, each followed by the end-of-text id, in its split's array."""
    tokenizer = _tokenizer_in_worker(job.tokenizer)
    dtype, eot = job.tokenizer.numpy_dtype, tokenizer.eot_token
    parts: dict[Split, list[npt.NDArray[Any]]] = {split: [] for split in SPLITS}
    documents = 0
    for document in unit_documents(job.unit, job.text_field):
        split: Split = "val" if is_val_document(document.ordinal, document.row, job.val_fraction) else "train"
        parts[split].append(tokenizer.encode_array(document.text).astype(dtype, copy=False))
        if document.last:
            documents += 1
            if eot is not None:
                parts[split].append(np.array([eot], dtype=dtype))
    splits: dict[Split, npt.NDArray[Any]] = {
        split: np.concatenate(arrays) if arrays else np.zeros(0, dtype) for split, arrays in parts.items()
    }
    return _Encoded(splits=splits, documents=documents)


def _unit_characters(job: _Job) -> str:
    """The distinct characters of a unit's documents."""
    seen: set[str] = set()
    for document in unit_documents(job.unit, job.text_field):
        seen.update(document.text)
    return "".join(seen)


J = TypeVar("J")
R = TypeVar("R")


def _in_order(work: Callable[[J], R], jobs: Iterator[J], workers: int) -> Iterator[R]:
    """`work` of each job, in order: in this process for one worker, else in `workers` processes
    with at most 2 x workers jobs in flight (bounded memory)."""
    if workers == 1:
        yield from map(work, jobs)
        return
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent, initargs=(os.getpid(),)
    )
    try:
        pending: deque[Future[R]] = deque()
        for job in jobs:
            pending.append(pool.submit(work, job))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _exit_with_parent(parent: int) -> None:
    """In a worker: end this process as soon as the preparing process is gone (killed with SIGKILL,
    it cannot stop its pool, and a worker waiting for work would wait forever)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_PARENT_POLL_S = 0.2


def _tokenizer_description(cfg: PrepareConfig, files: list[Path], units: list[Unit]) -> DatasetMeta:
    """The dataset's tokenizer as metadata (what workers rebuild it from); the char vocabulary is
    collected from the corpus by the workers, a BPE trained on its first documents."""
    if cfg.tokenizer in ("bpe", "huggingface"):
        choice = TokenizerChoice.of(cfg)
        documents = iter_documents(files, cfg.text_field)
        return meta_of(_json_tokenizer(choice, documents, cfg.source), tokenizer_from=cfg.tokenizer_from)
    if cfg.tokenizer == "char":
        jobs = (
            _Job(unit=unit, text_field=cfg.text_field, tokenizer=_PLACEHOLDER, val_fraction=cfg.val_fraction)
            for unit in units
        )
        seen: set[str] = set()
        for characters in _in_order(_unit_characters, jobs, cfg.workers):
            seen.update(characters)
        if not seen:
            raise DataError(f"{cfg.source}: corpus is empty (no document has text)")
        itos = sorted(seen)
        return DatasetMeta(kind="char", vocab_size=len(itos), dtype=dtype_for_vocab(len(itos)), itos=itos)
    encoder = TiktokenTokenizer(cfg.encoding)
    vocab = encoder.vocab_size
    return DatasetMeta(kind="tiktoken", vocab_size=vocab, dtype=dtype_for_vocab(vocab), encoding=encoder.encoding_name)


_PLACEHOLDER = DatasetMeta(kind="tiktoken", vocab_size=1, dtype="uint16", encoding="gpt2")


def _documents_stamp(cfg: PrepareConfig, corpus_sha256: str) -> dict[str, Any]:
    return {
        **_stamp(corpus_sha256, TokenizerChoice.of(cfg), cfg.val_fraction),
        "documents": {"text_field": cfg.text_field, "shard_tokens": cfg.shard_tokens},
    }


def _prepare_documents_locked(files: list[Path], cfg: PrepareConfig) -> DatasetMeta:
    """Tokenize a document corpus into shards (see shards.py), resuming a killed run's finished shards."""
    dataset_dir = cfg.dataset_dir
    units, corpus_sha256 = plan_units(files)
    stamp = _documents_stamp(cfg, corpus_sha256)
    _remove_stale_files(dataset_dir)
    existing = _up_to_date(dataset_dir, stamp)
    if existing is not None:
        log.info("%s is up to date for %s; skipping", dataset_dir, cfg.source)
        return existing
    description = _tokenizer_description(cfg, files, units)
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    done = load_progress(dataset_dir, key, description.numpy_dtype)
    resume = {split: resume_point(done[split]) for split in SPLITS}
    start = min(unit for unit, _skip in resume.values())
    shards, documents = _write_shards(units, start, cfg, description, key, done)
    for split in SPLITS:
        tokens = sum(shard.tokens for shard in shards[split])
        if tokens < _MIN_SPLIT_TOKENS:
            raise DataError(
                f"{cfg.source}: corpus too small: the {split} split has {tokens} token(s) from {documents} "
                f"document(s) (prepare.val_fraction {cfg.val_fraction} chooses whole documents)"
            )
    meta = dataclasses.replace(
        description,
        train_tokens=sum(shard.tokens for shard in shards["train"]),
        val_tokens=sum(shard.tokens for shard in shards["val"]),
        source_sha256=corpus_sha256,
        train_sha256=shards_sha256(shards["train"]),
        val_sha256=shards_sha256(shards["val"]),
        train_shards=tuple(shards["train"]),
        val_shards=tuple(shards["val"]),
    )
    if meta.tokenizer_json is not None:
        write_text_atomic(dataset_dir / TOKENIZER_FILENAME, meta.tokenizer_json)
    write_meta(dataset_dir / META_FILENAME, meta)
    write_text_atomic(dataset_dir / STAMP_FILENAME, json.dumps(stamp, indent=2) + "\n")
    remove_superseded(dataset_dir, meta)
    log.info(
        "prepared %s: %d documents, %d train + %d val tokens in %d + %d shards (%s, vocab %d, %s)",
        dataset_dir,
        documents,
        meta.train_tokens,
        meta.val_tokens,
        len(shards["train"]),
        len(shards["val"]),
        meta.encoding or meta.kind,
        meta.vocab_size,
        meta.dtype,
    )
    return meta


def _write_shards(
    units: list[Unit],
    start: int,
    cfg: PrepareConfig,
    description: DatasetMeta,
    key: str,
    done: dict[Split, list[Closed]],
) -> tuple[dict[Split, list[Shard]], int]:
    """Encode units[start:] on the workers and append each split's tokens to its shards; the shards
    of each split and the number of documents encoded."""
    dataset_dir, dtype = cfg.dataset_dir, description.numpy_dtype
    resume = {split: resume_point(done[split]) for split in SPLITS}
    writers: dict[Split, ShardWriter] = {
        split: ShardWriter(
            dataset_dir,
            split,
            key=key,
            shard_tokens=cfg.shard_tokens,
            dtype=dtype,
            closed=done[split],
            on_close=lambda: write_progress(dataset_dir, key, done),
        )
        for split in SPLITS
    }
    jobs = (
        _Job(unit=unit, text_field=cfg.text_field, tokenizer=description, val_fraction=cfg.val_fraction)
        for unit in units[start:]
    )
    documents = 0
    total = sum(unit.size for unit in units)
    try:
        with progress_bar(total, "encode", unit="B", unit_scale=True) as bar:
            bar.update(sum(unit.size for unit in units[:start]))
            for index, encoded in enumerate(_in_order(_encode_unit, jobs, cfg.workers), start=start):
                for split, writer in writers.items():
                    resume_unit, skip = resume[split]
                    if index >= resume_unit:
                        skipped = skip if index == resume_unit else 0
                        writer.add(encoded.splits[split][skipped:], unit=index, skipped=skipped)
                documents += encoded.documents
                bar.update(units[index].size)
                bar.set_postfix(documents=documents, refresh=False)
        return {split: writer.finish(len(units)) for split, writer in writers.items()}, documents
    finally:
        for writer in writers.values():
            writer.abandon()
