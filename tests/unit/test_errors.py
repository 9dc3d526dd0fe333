"""errors: the one-line summary of a library's exception, and of an operating system's refusal."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ml_playground.errors import os_reason, summary


def test_summary_is_the_first_non_empty_line() -> None:
    assert summary(ValueError("\n  size mismatch for wte\n\tmore detail\n")) == "size mismatch for wte"


def test_summary_of_an_empty_message_is_the_type_name() -> None:
    assert summary(RuntimeError("  \n")) == "RuntimeError"
    assert summary(EOFError()) == "EOFError"


def test_os_reason_is_the_systems_words(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        (tmp_path / "missing" / "x").read_bytes()
    assert os_reason(caught.value) == os.strerror(errno.ENOENT)


def test_os_reason_names_the_file_standing_where_a_folder_belongs(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("a file\n", encoding="utf-8")
    with pytest.raises(FileExistsError) as exists:
        (tmp_path / "logs").mkdir()
    with pytest.raises(NotADirectoryError) as not_a_folder:
        (tmp_path / "logs" / "tb" / "deeper").mkdir(parents=True)
    for caught in (exists, not_a_folder):
        assert os_reason(caught.value) == f"{tmp_path / 'logs'} is a file, not a folder"
