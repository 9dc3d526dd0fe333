"""The CLI as a user meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_help_at_every_level() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for command in ("prepare", "train", "sample", "loop", "export", "lit", "tensorboard", "verify"):
        assert command in top.stdout
        sub = cli(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "usage:" in sub.stdout


def test_unknown_experiment_is_one_line_listing_known(tmp_path: Path) -> None:
    result = cli("train", "no_such_experiment", cwd=tmp_path)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown experiment 'no_such_experiment'" in lines[0]
    assert "known experiments:" in lines[0]
    assert "Traceback" not in result.stderr


def test_verify_reports_versions_and_devices() -> None:
    result = cli("verify")
    assert result.returncode == 0, result.stderr
    for name in ("python", "torch", "numpy", "tiktoken", "devices: cpu"):
        assert name in result.stdout


def test_make_help_lists_every_target() -> None:
    result = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    targets = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    expected = (
        "help setup verify format pyright mypy quality quality-ext test unit unit-cov integration e2e "
        "acceptance test-cuda prepare train sample loop tensorboard export lit bench gguf-help"
    )
    assert set(expected.split()) - targets == set()


def test_make_target_without_exp_names_experiments() -> None:
    result = subprocess.run(["make", "-s", "train"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "EXP is required" in result.stderr
    assert "experiments:" in result.stderr


def test_make_passes_paths_with_spaces_and_quotes_as_one_argument(tmp_path: Path) -> None:
    """CONFIG (and the corpus and dataset it names) in a folder whose name has spaces and a quote."""
    folder = tmp_path / "dir with spaces" / "it's here"
    folder.mkdir(parents=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 20, encoding="utf-8")
    config = folder / "my config.toml"
    config.write_text(
        f"[prepare]\ndataset_dir = {str(folder / 'data set')!r}\nsource = {str(corpus)!r}\n", encoding="utf-8"
    )
    result = subprocess.run(
        ["make", "-s", "prepare", "EXP=shakespeare_char", f"CONFIG={config}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert {"meta.json", "train.bin", "val.bin"} <= {p.name for p in (folder / "data set").iterdir()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[prepare]\ndataset_dir = "x"\nsorce = "bundled"\n', "prepare.sorce: unknown key"),
        ('[prepare]\ndataset_dir = "x"\nval_fraction = "0.1"\n', "prepare.val_fraction"),
        ('[prepare]\ndataset_dir = "x"\nval_fraction = 1.5\n', "prepare.val_fraction"),
        ("[prepare\n", "TOML syntax error"),
        ("[prepare]\n", "prepare.dataset_dir: required key is missing"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    result = cli("prepare", "shakespeare", "--exp-config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    assert expected in lines[0]


def test_missing_config_file(tmp_path: Path) -> None:
    result = cli("train", "shakespeare", "--exp-config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.toml'}: config file not found"
