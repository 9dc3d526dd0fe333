"""Documents of a corpus made of files: what each file format holds and how it is cut into units of
work that worker processes read on their own.

Formats (by suffix): `.txt` (the file is one document), JSON Lines (`.jsonl`, `.jsonl.gz` /
`.json.gz`, `.jsonl.zst` / `.json.zst`: one document per line, the text under `text_field`) and
`.parquet` (one document per row, the text in the column `text_field`). A document's identity is
(the file's place in the corpus, its row): it decides the split, so the split does not depend on
how the corpus is cut into units or on the number of workers.

A unit is a run of whole documents: a byte range of a `.jsonl` file that starts and ends at a line
(found in one planning pass, which also hashes every file), a row group of a parquet file, or a
whole compressed or text file. Bad input is one line naming the file and, for rows, the line or row.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from ml_playground.data.sources import HUB_DATASET_PREFIX, file_sha256, hub_dataset, local_path
from ml_playground.errors import DataError

Format = Literal["txt", "jsonl", "jsonl.gz", "jsonl.zst", "parquet"]
_SUFFIXES: tuple[tuple[str, Format], ...] = (
    (".txt", "txt"),
    (".jsonl", "jsonl"),
    (".jsonl.gz", "jsonl.gz"),
    (".json.gz", "jsonl.gz"),
    (".jsonl.zst", "jsonl.zst"),
    (".json.zst", "jsonl.zst"),
    (".parquet", "parquet"),
)
DOCUMENT_SUFFIXES = tuple(suffix for suffix, _ in _SUFFIXES)
DEFAULT_UNIT_BYTES = 4 << 20
_READ_BLOCK = 1 << 20
DEFAULT_CHUNK_BYTES = 1 << 20
# A piece with no safe cut point grows up to this many blocks before it is cut at a space.
_MAX_BLOCKS_PER_PIECE = 16


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


def file_format(path: Path) -> Format | None:
    """The format a file name says, or None for a file that holds no documents we read."""
    name = path.name.lower()
    return next((fmt for suffix, fmt in _SUFFIXES if name.endswith(suffix)), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unit:
    """Whole documents of one file, read by one worker: bytes [start, end) of a .jsonl file, row
    group `start` of a parquet file, or the whole file (start 0, end -1)."""

    path: Path
    ordinal: int  # the file's place in the corpus
    fmt: Format
    start: int = 0
    end: int = -1
    first_row: int = 1  # the row (line) number of the unit's first document, counted from 1
    size: int = 0  # its share of the corpus's bytes (for progress)


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """A document's text, or a piece of it (a long .txt file comes in pieces; `last` marks the end)."""

    ordinal: int
    row: int
    text: str
    last: bool = True


def plan_units(files: Sequence[Path], unit_bytes: int = DEFAULT_UNIT_BYTES) -> tuple[list[Unit], str]:
    """The units of work of a corpus, in corpus order, and the corpus's sha256 (its files' names and
    contents, in order), from one read of every file."""
    units: list[Unit] = []
    corpus = hashlib.sha256()
    for ordinal, path in enumerate(files):
        fmt = file_format(path)
        if fmt is None:
            raise DataError(f"{path}: not a corpus file (expected one of {', '.join(DOCUMENT_SUFFIXES)})")
        try:
            file_units, digest = _plan_file(path, ordinal, fmt, unit_bytes)
        except OSError as exc:
            raise DataError(f"{path}: cannot read the corpus file ({exc.strerror or exc})") from None
        units += file_units
        corpus.update(f"{path.name}\0{digest}\n".encode())
    return units, corpus.hexdigest()


def _plan_file(path: Path, ordinal: int, fmt: Format, unit_bytes: int) -> tuple[list[Unit], str]:
    if fmt == "jsonl":
        return _jsonl_units(path, ordinal, unit_bytes)
    digest, size = file_sha256(path), path.stat().st_size
    if fmt != "parquet":
        return [Unit(path=path, ordinal=ordinal, fmt=fmt, size=size)], digest
    metadata: Any = _parquet(path).metadata
    units: list[Unit] = []
    first_row = 1
    rows: int = max(metadata.num_rows, 1)
    groups: int = metadata.num_row_groups
    for group in range(groups):
        group_rows: int = metadata.row_group(group).num_rows
        share = size * group_rows // rows
        units.append(
            Unit(path=path, ordinal=ordinal, fmt=fmt, start=group, end=group + 1, first_row=first_row, size=share)
        )
        first_row += group_rows
    return units, digest


def _jsonl_units(path: Path, ordinal: int, unit_bytes: int) -> tuple[list[Unit], str]:
    """Byte ranges of about `unit_bytes`, each ending after a newline, with their first line numbers."""

    def unit(start: int, end: int, first_row: int) -> Unit:
        return Unit(
            path=path, ordinal=ordinal, fmt="jsonl", start=start, end=end, first_row=first_row, size=end - start
        )

    units: list[Unit] = []
    digest = hashlib.sha256()
    start, first_row, row, offset = 0, 1, 1, 0
    with path.open("rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
            pos = 0
            while (want := start + unit_bytes - offset) < len(block):
                newline = block.find(b"\n", max(want, pos))
                if newline < 0:
                    break
                row += block.count(b"\n", pos, newline + 1)
                end = offset + newline + 1
                units.append(unit(start, end, first_row))
                start, first_row, pos = end, row, newline + 1
            row += block.count(b"\n", pos)
            offset += len(block)
    if offset > start:
        units.append(unit(start, offset, first_row))
    return units, digest.hexdigest()


# pyarrow's classes are untyped for pyright: they are held as Any at this boundary.
_ARROW_ERRORS = cast("tuple[type[Exception], ...]", (pa.ArrowException, OSError))


def _parquet(path: Path) -> Any:
    """A pyarrow ParquetFile."""
    try:
        return pq.ParquetFile(path)
    except _ARROW_ERRORS as exc:
        raise DataError(f"{path}: cannot read the parquet file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unit_documents(unit: Unit, text_field: str) -> Iterator[Document]:
    """The documents of one unit, in order."""
    try:
        if unit.fmt == "txt":
            yield from _txt_documents(unit)
        elif unit.fmt == "parquet":
            yield from _parquet_documents(unit, text_field)
        elif unit.fmt == "jsonl":
            with unit.path.open("rb") as handle:
                handle.seek(unit.start)
                yield from _json_lines(unit, io.BytesIO(handle.read(unit.end - unit.start)), text_field)
        elif unit.fmt == "jsonl.gz":
            with gzip.open(unit.path, "rb") as stream:
                yield from _json_lines(unit, stream, text_field)
        else:
            yield from _json_lines(unit, _lines(_zstd_blocks(unit.path)), text_field)
    except OSError as exc:
        raise DataError(f"{unit.path}: cannot read the corpus file ({exc.strerror or exc})") from None
    except (EOFError, zlib.error, zstandard.ZstdError) as exc:
        raise DataError(f"{unit.path}: truncated or corrupt {unit.fmt} file ({_first_line(exc)})") from None


def _zstd_blocks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of a .zst file (one frame or several); a frame cut short is an EOFError
    (zstandard's stream reader just stops there)."""
    with path.open("rb") as handle:
        frame, in_frame = zstandard.ZstdDecompressor().decompressobj(), False
        while block := handle.read(_READ_BLOCK):
            while block:
                yield frame.decompress(block)
                in_frame = True
                block = b""
                if frame.eof:
                    block = frame.unused_data
                    frame, in_frame = zstandard.ZstdDecompressor().decompressobj(), False
    if in_frame:
        raise EOFError("the last zstd frame ends early")


def _lines(blocks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for block in blocks:
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


def _txt_documents(unit: Unit) -> Iterator[Document]:
    size = unit.path.stat().st_size
    if size == 0:
        return
    pieces = (text for _offset, text in iter_text(unit.path, 0, size))
    text = next(pieces)
    for following in pieces:
        yield Document(ordinal=unit.ordinal, row=1, text=text, last=False)
        text = following
    yield Document(ordinal=unit.ordinal, row=1, text=text)


def _json_lines(unit: Unit, lines: Iterator[bytes] | BinaryIO, text_field: str) -> Iterator[Document]:
    for row, line in enumerate(lines, start=unit.first_row):
        if not line.strip():
            continue
        where = f"{unit.path}: line {row}"
        try:
            record: object = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{where}: invalid UTF-8 at byte {exc.start} of the line") from None
        except json.JSONDecodeError as exc:
            if not line.endswith(b"\n"):
                raise DataError(f"{where}: truncated JSON at the end of the file ({exc.msg})") from None
            raise DataError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        fields = cast("dict[str, object]", record)
        if text_field not in fields:
            keys = ", ".join(sorted(fields)[:8]) or "none"
            raise DataError(f"{where}: no key {text_field!r} (prepare.text_field); its keys: {keys}")
        text = fields[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: {text_field!r} is {type(text).__name__}, expected a string")
        if text:
            yield Document(ordinal=unit.ordinal, row=row, text=text)


def _parquet_documents(unit: Unit, text_field: str) -> Iterator[Document]:
    parquet = _parquet(unit.path)
    schema: Any = parquet.schema_arrow
    names: list[str] = schema.names
    if text_field not in names:
        columns = ", ".join(names[:8]) or "none"
        raise DataError(f"{unit.path}: no column {text_field!r} (prepare.text_field); its columns: {columns}")
    column_type: Any = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise DataError(f"{unit.path}: column {text_field!r} holds {column_type}, expected strings")
    try:
        table: Any = parquet.read_row_group(unit.start, columns=[text_field])
    except _ARROW_ERRORS as exc:
        raise DataError(f"{unit.path}: row group {unit.start} cannot be read ({_first_line(exc)})") from None
    texts = cast("list[str | None]", table.column(0).to_pylist())
    for row, text in enumerate(texts, start=unit.first_row):
        if text is None:
            raise DataError(f"{unit.path}: row {row}: {text_field!r} is null, expected a string")
        if text:
            yield Document(ordinal=unit.ordinal, row=row, text=text)


def iter_documents(files: Sequence[Path], text_field: str = "text") -> Iterator[str]:
    """Every document's text in corpus order (a long .txt file in pieces of about 1 MiB, cut where BPE
    pre-tokenization splits anyway): what a tokenizer trainer reads its sample from."""
    for ordinal, path in enumerate(files):
        fmt = file_format(path)
        if fmt is None:
            raise DataError(f"{path}: not a corpus file (expected one of {', '.join(DOCUMENT_SUFFIXES)})")
        if fmt == "parquet":
            units = _plan_file(path, ordinal, fmt, DEFAULT_UNIT_BYTES)[0]
        else:
            units = [Unit(path=path, ordinal=ordinal, fmt=fmt, end=path.stat().st_size if fmt == "jsonl" else -1)]
        for unit in units:
            for document in unit_documents(unit, text_field):
                yield document.text


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def document_files(source: str) -> list[Path] | None:
    """The files of a document corpus, in order: every corpus file under a folder (hidden ones
    aside), matching a glob or a Hugging Face dataset's file pattern, or one file of documents
    (.jsonl, .jsonl.gz, .jsonl.zst, .parquet); None for a single text (a file path, URL or
    "bundled"), which is prepared as one text."""
    if source == "bundled" or source.startswith(("http://", "https://")):
        return None
    hub = source.startswith(HUB_DATASET_PREFIX)
    if hub or any(char in source for char in "*?["):
        if hub:
            snapshot, relative = hub_dataset(source)
            pattern = snapshot / relative
        else:
            pattern = local_path(source)
        files = sorted(Path(name) for name in glob.glob(str(pattern), recursive=True) if Path(name).is_file())
        if not files:
            raise DataError(f"prepare.source {source!r}: no file matches {pattern}")
        strange = next((path for path in files if file_format(path) is None), None)
        if strange is not None:
            raise DataError(
                f"{strange}: matched by prepare.source but not a corpus file ({', '.join(DOCUMENT_SUFFIXES)})"
            )
        return files
    path = local_path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _visible(p, path) and file_format(p) is not None)
        if not files:
            raise DataError(f"{path}: no corpus files in the folder (prepare.source; {', '.join(DOCUMENT_SUFFIXES)})")
        return files
    if path.is_file() and file_format(path) not in (None, "txt"):
        return [path]
    return None
