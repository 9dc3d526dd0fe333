"""`ml-playground prepare` in a real subprocess: outputs, skipping, one-line data errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ml_playground.data.meta import read_meta
from ml_playground.data.prepare import STAMP_FILENAME
from ml_playground.data.sources import file_sha256
from tests.support.corpora import write_parquet
from tests.support.one_line import one_line_error
from tests.support.tiny_hub import tiny_hub

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


def _documents_config(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "docs.toml"
    path.write_text(
        f'[prepare]\ndataset_dir = "{tmp_path / "ds"}"\nsource = "{source}"\ntokenizer = "tiktoken"\n'
        "val_fraction = 0.3\nworkers = 2\nshard_tokens = 300\n",
        encoding="utf-8",
    )
    return path


def _hub_env(home: Path, endpoint: str | None) -> dict[str, str]:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return env | ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint} if endpoint is not None else {})


def test_a_hub_dataset_is_downloaded_by_pattern_and_prepared_in_shards(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "datasets" / "someone" / "tiny-web"
    (repo / "sample" / "10BT").mkdir(parents=True)
    for i in range(2):
        docs = [f"document {i}-{j}: " + "words and more words " * (j % 9 + 1) for j in range(40)]
        write_parquet(repo / "sample" / "10BT" / f"{i:03d}.parquet", {"text": docs, "id": list(range(40))})
    (repo / "other.parquet").write_bytes(b"not fetched")
    config = _documents_config(tmp_path, "hf://datasets/someone/tiny-web/sample/10BT/*.parquet")
    command = [sys.executable, "-m", "ml_playground.cli", "prepare", "shakespeare", "--exp-config", str(config)]
    log = tmp_path / "hub.log"
    with tiny_hub(tmp_path / "hub", log) as endpoint:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_hub_env(tmp_path / "hf", endpoint)
        )
    assert done.returncode == 0, done.stderr
    assert "other.parquet" not in log.read_text(encoding="utf-8")
    meta = read_meta(tmp_path / "ds" / "meta.json")
    assert meta.train_shards is not None
    assert len(meta.train_shards) > 1
    # Offline, from the cache: the same dataset, found up to date.
    again = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_hub_env(tmp_path / "hf", None)
    )
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stderr
    assert read_meta(tmp_path / "ds" / "meta.json") == meta


def test_bad_document_corpora_are_one_line_naming_file_and_row(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n', encoding="utf-8")
    line = one_line_error(prepare(_documents_config(tmp_path, str(corpus)), "shakespeare"), 4)
    assert line.endswith(f"{corpus / 'a.jsonl'}: line 2: no key 'text' (prepare.text_field); its keys: body")
    config = _documents_config(tmp_path, "hf://datasets/someone/absent/*.parquet")
    offline = subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", "prepare", "shakespeare", "--exp-config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=_hub_env(tmp_path / "hf", None),
    )
    assert offline.returncode == 4  # after the log line saying what it fetches, one error line
    assert "Traceback" not in offline.stderr
    assert "cannot download it from the Hugging Face hub" in offline.stderr.strip().splitlines()[-1]
