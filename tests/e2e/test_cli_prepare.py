"""`ml-playground prepare` in a real subprocess: outputs, skipping, one-line data errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ml_playground.data.prepare import STAMP_FILENAME
from ml_playground.data.sources import file_sha256
from tests.support.one_line import one_line_error

ROOT = Path(__file__).resolve().parents[2]


def prepare(config: Path, experiment: str = "bundestag_char") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", "prepare", experiment, "--exp-config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _config(tmp_path: Path, source: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(
        f'[prepare]\ndataset_dir = "{tmp_path / "ds"}"\nsource = "{source}"\ntokenizer = "char"\n', encoding="utf-8"
    )
    return path


def test_prepare_cli_errors_and_success(tmp_path: Path) -> None:
    corpus = tmp_path / "input.txt"
    config = _config(tmp_path, corpus)

    line = one_line_error(prepare(config), 4)
    assert f"{corpus}: corpus not found" in line

    good = "Grüß Gott.\nDas Parlament tagt.\n".encode() * 30
    corpus.write_bytes(good + b"\xe4 kaputt\n")
    line = one_line_error(prepare(config), 4)
    assert f"{corpus}: invalid UTF-8 at byte {len(good)}" in line

    corpus.write_bytes(good)
    first = prepare(config)
    assert first.returncode == 0, first.stderr
    assert {"train.bin", "val.bin", "meta.json"} <= {p.name for p in (tmp_path / "ds").iterdir()}
    second = prepare(config)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stderr


def test_bundestag_tiktoken_reads_the_bundestag_char_corpus_unless_it_has_its_own(tmp_path: Path) -> None:
    # The shipped layout in a scratch root: bundestag_tiktoken's own input.txt, else bundestag_char's.
    own = tmp_path / "bundestag_tiktoken" / "input.txt"
    shared = tmp_path / "bundestag_char" / "input.txt"
    config = tmp_path / "exp.toml"
    config.write_text(
        f'[prepare]\ndataset_dir = "{tmp_path / "ds"}"\nsource = "{own}"\nfallback_source = "{shared}"\n'
        'tokenizer = "tiktoken"\nencoding = "cl100k_base"\n',
        encoding="utf-8",
    )

    line = one_line_error(prepare(config, "bundestag_tiktoken"), 4)
    assert str(own) in line
    assert str(shared) in line

    shared.parent.mkdir()
    shared.write_text("Sehr geehrte Damen und Herren, der Bundestag tagt.\n" * 40, encoding="utf-8")
    result = prepare(config, "bundestag_tiktoken")
    assert result.returncode == 0, result.stderr
    assert f"reading {shared}" in result.stderr
    assert _prepared_from(tmp_path / "ds") == file_sha256(shared)

    own.parent.mkdir()
    own.write_text("Die Sitzung ist eröffnet.\n" * 40, encoding="utf-8")
    result = prepare(config, "bundestag_tiktoken")
    assert result.returncode == 0, result.stderr
    assert "reading" not in result.stderr
    assert _prepared_from(tmp_path / "ds") == file_sha256(own)


def _prepared_from(dataset_dir: Path) -> str:
    """The sha256 of the input the dataset was prepared from (recorded in its up-to-date stamp)."""
    stamp: dict[str, object] = json.loads((dataset_dir / STAMP_FILENAME).read_text(encoding="utf-8"))
    return str(stamp["input_sha256"])
