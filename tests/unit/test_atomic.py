from __future__ import annotations

import os
from pathlib import Path

import pytest

from ml_playground.atomic import (
    atomic_binary_writer,
    atomic_output_path,
    link_or_copy_atomic,
    write_text_atomic,
)


def test_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def write_then_fail() -> None:
        with atomic_binary_writer(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_text_is_written_as_utf8(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    write_text_atomic(target, "Grüße 🎭\n")
    assert target.read_bytes() == "Grüße 🎭\n".encode()


def test_new_file_gets_umask_mode_and_existing_mode_is_kept(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.txt"
    write_text_atomic(fresh, "x")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~_current_umask()
    kept = tmp_path / "kept.sh"
    kept.write_text("old")
    kept.chmod(0o750)
    write_text_atomic(kept, "new")
    assert kept.stat().st_mode & 0o777 == 0o750


def test_output_path_for_a_named_writer_gets_the_same_mode_and_atomicity(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    with atomic_output_path(target) as tmp:
        tmp.write_bytes(b"gguf")  # what a library writing to a file name does
        assert not target.exists()
    assert target.read_bytes() == b"gguf"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_current_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def _current_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-links-copy"])
def test_link_or_copy_survives_the_source_being_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    if not links:

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise PermissionError("hard links not supported")

        monkeypatch.setattr(os, "link", refuse)
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    write_text_atomic(last, "step 100")
    write_text_atomic(best, "step 0")
    link_or_copy_atomic(last, best)
    assert best.read_text() == "step 100"
    assert (best.stat().st_ino == last.stat().st_ino) is links
    write_text_atomic(last, "step 200")  # the next checkpoint replaces last; best keeps its bytes
    assert best.read_text() == "step 100"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
