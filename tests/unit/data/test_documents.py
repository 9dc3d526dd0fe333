from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard

from ml_playground.data.documents import document_files, iter_documents, plan_units, unit_documents
from ml_playground.errors import DataError
from tests.support.corpora import write_parquet

DOCS = ["first document\nwith two lines", "zweites Dokument: Grüße", "", "third, after an empty one", "日本語"]


def _jsonl(docs: list[str], key: str = "text") -> bytes:
    return "".join(json.dumps({key: doc, "id": i}) + "\n" for i, doc in enumerate(docs)).encode("utf-8")


def _write_every_format(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet")]
    paths[0].write_bytes(_jsonl(DOCS))
    paths[1].write_bytes(gzip.compress(_jsonl(DOCS)))
    paths[2].write_bytes(zstandard.ZstdCompressor().compress(_jsonl(DOCS)))
    write_parquet(paths[3], {"text": DOCS}, row_group_size=2)
    return paths


def test_every_format_yields_the_same_documents_in_order(tmp_path: Path) -> None:
    paths = _write_every_format(tmp_path / "corpus")
    (tmp_path / "corpus" / "e.txt").write_text("a text file is one document\n", encoding="utf-8")
    (tmp_path / "corpus" / ".hidden.jsonl").write_bytes(_jsonl(["never read"]))
    files = document_files(str(tmp_path / "corpus"))
    assert files is not None
    assert files == [*paths, tmp_path / "corpus" / "e.txt"]
    non_empty = [doc for doc in DOCS if doc]
    assert list(iter_documents(files)) == non_empty * 4 + ["a text file is one document\n"]


def test_units_cover_the_file_and_keep_line_numbers(tmp_path: Path) -> None:
    docs = [f"document {i} " + "x" * (i % 7) for i in range(200)]
    path = tmp_path / "c.jsonl"
    path.write_bytes(_jsonl(docs))
    units, _sha = plan_units([path], unit_bytes=300)
    assert len(units) > 10
    assert [u.start for u in units[1:]] == [u.end for u in units[:-1]]
    assert units[-1].end == path.stat().st_size
    rows = [(d.row, d.text) for unit in units for d in unit_documents(unit, "text")]
    assert rows == [(i + 1, doc) for i, doc in enumerate(docs)]


def test_a_bad_row_deep_in_a_file_is_named_by_its_line(tmp_path: Path) -> None:
    lines = _jsonl([f"doc {i}" for i in range(100)]).splitlines(keepends=True)
    lines[76] = b'{"id": 76}\n'
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"".join(lines))
    units, _sha = plan_units([path], unit_bytes=200)
    documents = (document for unit in units for document in unit_documents(unit, "text"))
    with pytest.raises(DataError, match=r"c\.jsonl: line 77: no key 'text' \(prepare\.text_field\); its keys: id$"):
        list(documents)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": 3}\n', r"line 1: 'text' is int, expected a string"),
        (b'{"text": "ok"}\n{"text": "\xff"}\n', r"line 2: invalid UTF-8 at byte 10 of the line"),
        (b'{"text": "ok"}\n[1, 2]\n', r"line 2: expected a JSON object, got list"),
        (b'{"text": "ok"}\n{"text": "cut', r"line 2: truncated JSON at the end of the file"),
        (b'{"text": "ok"}\n{"text" "x"}\n', r"line 2: not valid JSON"),
    ],
)
def test_bad_json_lines_are_one_line_naming_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{path}: {message}"):
        list(iter_documents([path]))


@pytest.mark.parametrize("name", ["c.jsonl.gz", "c.jsonl.zst", "c.parquet"])
def test_truncated_compressed_and_parquet_files_are_one_line(tmp_path: Path, name: str) -> None:
    paths = _write_every_format(tmp_path / "corpus")
    whole = next(p for p in paths if p.suffix == Path(name).suffix).read_bytes()
    path = tmp_path / name
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=rf"^{path}: (truncated or corrupt|cannot read the parquet file)"):
        list(iter_documents([path]))


def test_parquet_column_problems_name_the_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    write_parquet(path, {"content": ["a"]})
    with pytest.raises(DataError, match=r"no column 'text' \(prepare\.text_field\); its columns: content$"):
        list(iter_documents([path]))
    write_parquet(path, {"text": [1, 2]})
    with pytest.raises(DataError, match=r"column 'text' holds int64, expected strings$"):
        list(iter_documents([path]))
    write_parquet(path, {"text": ["a", "b", None]}, row_group_size=2)
    with pytest.raises(DataError, match=rf"^{path}: row 3: 'text' is null, expected a string$"):
        list(iter_documents([path]))


def test_text_field_names_the_key_and_the_column(tmp_path: Path) -> None:
    jsonl, parquet = tmp_path / "a.jsonl", tmp_path / "b.parquet"
    jsonl.write_bytes(_jsonl(["from json"], key="content"))
    write_parquet(parquet, {"content": ["from parquet"]})
    assert list(iter_documents([jsonl, parquet], text_field="content")) == ["from json", "from parquet"]


def test_sources_a_glob_a_folder_or_one_text(tmp_path: Path) -> None:
    paths = _write_every_format(tmp_path / "corpus")
    assert document_files(str(tmp_path / "corpus" / "*.jsonl*")) == paths[:3]
    assert document_files(str(paths[3])) == [paths[3]]
    (tmp_path / "input.txt").write_text("one text", encoding="utf-8")
    assert document_files(str(tmp_path / "input.txt")) is None  # one text: prepared as before
    assert document_files("bundled") is None
    with pytest.raises(DataError, match=r"no file matches"):
        document_files(str(tmp_path / "nothing" / "*.parquet"))
    (tmp_path / "corpus" / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"notes\.md: matched by prepare\.source but not a corpus file"):
        document_files(str(tmp_path / "corpus" / "*"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no corpus files in the folder"):
        document_files(str(tmp_path / "empty"))
