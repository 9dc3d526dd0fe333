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
import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt

from ml_playground.atomic import atomic_binary_writer, fsync_dir, write_text_atomic
from ml_playground.config import PrepareConfig
from ml_playground.data.checks import Scan, check_token_file, record_scan
from ml_playground.data.meta import META_FILENAME, DatasetMeta, dtype_for_vocab, read_meta, write_meta
from ml_playground.data.sources import file_sha256, resolve_input
from ml_playground.dir_lock import exclusive_lock
from ml_playground.errors import DataError
from ml_playground.progress import progress_bar
from ml_playground.tokenizers import CharTokenizer, TiktokenTokenizer

log = logging.getLogger(__name__)

PREPARE_FORMAT = 1
STAMP_FILENAME = ".prepare-stamp.json"
LOCK_FILENAME = ".prepare.lock"
TRAIN_FILENAME = "train.bin"
VAL_FILENAME = "val.bin"
DEFAULT_CHUNK_BYTES = 1 << 20
# A piece with no safe cut point grows up to this many blocks before it is cut at a space.
_MAX_BLOCKS_PER_PIECE = 16
_MIN_SPLIT_TOKENS = 2  # one (input, target) pair

# Writes the experiment's bundled corpus to the given path.
BundledCorpus = Callable[[Path], None]


def _is_printable_ascii(byte: int) -> bool:
    return 0x21 <= byte <= 0x7E


def _last_safe_cut(buf: bytes) -> int:
    """Index just after the last "\\n" with printable ASCII on both sides; 0 if none."""
    i = buf.rfind(b"\n", 1, len(buf) - 1)
    while i > 0:
        if _is_printable_ascii(buf[i - 1]) and _is_printable_ascii(buf[i + 1]):
            return i + 1
        i = buf.rfind(b"\n", 1, i)
    return 0


def _fallback_cut(buf: bytes) -> int:
    """A cut for a piece without safe points: after the last whitespace, else a char boundary."""
    space = max(buf.rfind(b" "), buf.rfind(b"\n"))
    if space > 0:
        return space + 1
    end = len(buf) - 1
    while end > 0 and (buf[end] & 0xC0) == 0x80:  # step back over UTF-8 continuation bytes
        end -= 1
    return end if end > 0 else len(buf)


def _decode(piece: bytes, offset: int, path: Path) -> str:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: invalid UTF-8 at byte {offset + exc.start}") from None


def iter_text(path: Path, start: int, end: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, str]]:
    """Decoded pieces (byte offset, text) covering bytes [start, end) of `path`, cut at safe points."""
    with path.open("rb") as handle:
        handle.seek(start)
        offset = start
        buf = b""
        while True:
            want = min(chunk_bytes, end - offset - len(buf))
            if want > 0:
                buf += handle.read(want)
            at_end = offset + len(buf) >= end
            if at_end:
                cut = len(buf)
            else:
                cut = _last_safe_cut(buf)
                if cut == 0:
                    if len(buf) < _MAX_BLOCKS_PER_PIECE * chunk_bytes:
                        continue
                    cut = _fallback_cut(buf)
            if cut:
                yield offset, _decode(buf[:cut], offset, path)
            offset += cut
            buf = buf[cut:]
            if at_end:
                return


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


Encoder = CharTokenizer | TiktokenTokenizer


def _encode_pieces(
    pieces: Iterator[tuple[int, str]], tokenizer: Encoder, on_bytes: Callable[[int], object]
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
    tokenizer: Encoder,
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


def _stamp(input_sha256: str, tokenizer: str, encoding: str | None, val_fraction: float) -> dict[str, Any]:
    return {
        "format": PREPARE_FORMAT,
        "input_sha256": input_sha256,
        "tokenizer": tokenizer,
        "encoding": encoding,
        "val_fraction": val_fraction,
    }


def _up_to_date(dataset_dir: Path, stamp: dict[str, Any]) -> DatasetMeta | None:
    """The existing metadata when the stamp agrees with `stamp` and the files pass training's
    checks; else None."""
    stamp_path = dataset_dir / STAMP_FILENAME
    meta_path = dataset_dir / META_FILENAME
    try:
        if json.loads(stamp_path.read_text(encoding="utf-8")) != stamp:
            return None
        meta = read_meta(meta_path)
        check_token_file(dataset_dir / TRAIN_FILENAME, "train", meta, meta_path=meta_path, block_size=1)
        check_token_file(dataset_dir / VAL_FILENAME, "val", meta, meta_path=meta_path, block_size=1)
    except (OSError, ValueError):
        return None
    except DataError as exc:
        log.info("%s; preparing again", exc)
        return None
    return meta


def _remove_stale_files(dataset_dir: Path) -> None:
    """Temp files a killed run left behind (atomic writers clean up only on exceptions); safe under
    the dataset's lock, which no other preparation holds."""
    for name in (TRAIN_FILENAME, VAL_FILENAME, META_FILENAME, STAMP_FILENAME):
        for stale in dataset_dir.glob(f".{name}.*.tmp"):
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
    """meta.json names the installed token files; the stamp follows."""
    for name, scan in scans.items():
        record_scan(dataset_dir / name, meta.numpy_dtype, scan)
    write_meta(dataset_dir / META_FILENAME, meta)
    write_text_atomic(dataset_dir / STAMP_FILENAME, json.dumps(stamp, indent=2) + "\n")


def _encoder(
    tokenizer: Literal["char", "tiktoken"], encoding: str, input_path: Path, size: int, chunk_bytes: int
) -> Encoder:
    if tokenizer == "char":
        return CharTokenizer(char_vocabulary(input_path, size, chunk_bytes))
    return TiktokenTokenizer(encoding)


def _prepare_locked(
    input_path: Path,
    dataset_dir: Path,
    *,
    tokenizer: Literal["char", "tiktoken"],
    encoding: str,
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
    stamp = _stamp(input_sha256, tokenizer, encoding if tokenizer == "tiktoken" else None, val_fraction)
    _remove_stale_files(dataset_dir)
    existing = _up_to_date(dataset_dir, stamp)
    if existing is not None:
        log.info("%s is up to date for %s; skipping", dataset_dir, input_path)
        return existing

    encoder = _encoder(tokenizer, encoding, input_path, size, chunk_bytes)
    dtype = dtype_for_vocab(encoder.vocab_size)
    np_dtype = np.dtype("<u2") if dtype == "uint16" else np.dtype("<u4")
    split = split_offset(input_path, size, val_fraction)
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
    meta = DatasetMeta(
        kind="char" if isinstance(encoder, CharTokenizer) else "tiktoken",
        vocab_size=encoder.vocab_size,
        dtype=dtype,
        encoding=encoder.encoding_name if isinstance(encoder, TiktokenTokenizer) else None,
        itos=encoder.itos if isinstance(encoder, CharTokenizer) else None,
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
    tokenizer: Literal["char", "tiktoken"],
    encoding: str,
    val_fraction: float,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> DatasetMeta:
    """Tokenize `input_path` into dataset_dir/{train.bin,val.bin,meta.json}; skip if up to date."""
    with _preparing(dataset_dir):
        return _prepare_locked(
            input_path,
            dataset_dir,
            tokenizer=tokenizer,
            encoding=encoding,
            val_fraction=val_fraction,
            chunk_bytes=chunk_bytes,
        )


def prepare_dataset(cfg: PrepareConfig, *, experiment: str, bundled: BundledCorpus | None = None) -> DatasetMeta:
    """The preparer every experiment shares: resolve [prepare].source, then tokenize it (as
    `prepare_corpus`), all under the dataset folder's lock."""
    with _preparing(cfg.dataset_dir):
        if cfg.source == "bundled":
            if bundled is None:
                raise DataError(
                    f"prepare.source: experiment {experiment!r} has no bundled corpus; "
                    "set it to a UTF-8 text file path or an http(s):// URL"
                )
            input_path = cfg.dataset_dir / f"{experiment}_bundled.txt"
            bundled(input_path)
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
            tokenizer=cfg.tokenizer,
            encoding=cfg.encoding,
            val_fraction=cfg.val_fraction,
            chunk_bytes=DEFAULT_CHUNK_BYTES,
        )
