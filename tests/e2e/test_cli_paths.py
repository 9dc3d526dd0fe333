"""Relative paths in a TOML resolve against the project root from any working directory.

The CLI runs in a folder far from the project root, with a config whose paths are all relative
(dataset_dir, [prepare] source, out_dir, a FILE: prompt, export_dir) and point into tmp_path
from the project root. The working directory is nested exactly as deep as those paths climb, so
resolving them against it instead would land in a separate tree under tmp_path/"cwd", which must
stay empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_playground.config import PROJECT_ROOT
from tests.support.torchrun import write_toml

CORPUS = "Das Parlament tagt heute. Die Abgeordneten sprechen über den Haushalt.\n" * 20


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,  # a hang, not a speed check
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_relative_paths_resolve_against_the_project_root_from_another_cwd(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    (tmp_path / "prompt.txt").write_text("Die Abgeordneten", encoding="utf-8")
    rel = Path(os.path.relpath(tmp_path, PROJECT_ROOT))  # e.g. ../../tmp/pytest-of-x/pytest-1/test0
    assert not rel.is_absolute()
    climbs = sum(1 for part in rel.parts if part == "..")
    cwd = tmp_path.joinpath("cwd", *["d"] * climbs)  # cwd / rel lands in tmp_path / "cwd" / ...
    cwd.mkdir(parents=True)
    tables = {
        "prepare": {"dataset_dir": f"{rel}/ds", "source": f"{rel}/corpus.txt", "tokenizer": "char"},
        "train": {
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
            "data": {"dataset_dir": f"{rel}/ds", "batch_size": 4, "block_size": 16},
            "schedule": {"warmup_iters": 0, "lr_decay_iters": 2, "min_lr": 1e-4},
            "runtime": {"out_dir": f"{rel}/out", "max_iters": 2, "eval_interval": 2, "eval_iters": 1},
        },
        "sample": {
            "runtime": {"out_dir": f"{rel}/out"},
            "sample": {"start": f"FILE:{rel}/prompt.txt", "max_new_tokens": 5, "temperature": 0.0},
        },
        "export": {"ollama": {"enabled": True, "export_dir": f"{rel}/export", "model_name": "tiny", "quant": "f32"}},
    }
    write_toml(cwd / "exp.toml", tables)

    # prepare, train, sample in one process; the config path itself is relative to the cwd.
    looped = cli("loop", "bundestag_char", "--exp-config", "exp.toml", cwd=cwd)
    assert looped.returncode == 0, looped.stderr[-3000:]
    exported = cli("export", "bundestag_char", "--exp-config", "exp.toml", cwd=cwd)
    assert exported.returncode == 0, exported.stderr[-3000:]

    assert {p.name for p in (tmp_path / "ds").iterdir()} >= {"train.bin", "val.bin", "meta.json"}
    assert {"ckpt_best.pt", "ckpt_last.pt"} <= {p.name for p in (tmp_path / "out").iterdir()}
    (sample,) = (tmp_path / "out" / "samples").glob("*.txt")
    assert sample.read_text(encoding="utf-8").startswith("Die Abgeordneten")  # the FILE: prompt
    assert looped.stdout.startswith("Die Abgeordneten")
    assert (tmp_path / "export" / "model.gguf").is_file()
    assert [p for p in (tmp_path / "cwd").rglob("*") if p.is_file()] == [cwd / "exp.toml"]
