"""`ml-playground sample` in a real subprocess: a nanoGPT ckpt.pt streams text; no checkpoint is one line."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import torch

from ml_playground.config import GPTConfig
from ml_playground.model import GPT

ROOT = Path(__file__).resolve().parents[2]
ITOS = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak.\n"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def write_config(path: Path, out_dir: Path) -> None:
    path.write_text(
        f"""
[sample.runtime]
out_dir = "{out_dir}"
seed = 42

[sample.sample]
start = "First"
num_samples = 1
max_new_tokens = 25
temperature = 0.9
top_k = 10
top_p = 0.95
""",
        encoding="utf-8",
    )


def write_nanogpt_checkpoint(out_dir: Path) -> None:
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=len(ITOS), n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
            "model_args": {
                "n_layer": 1,
                "n_head": 2,
                "n_embd": 16,
                "block_size": 16,
                "bias": False,
                "vocab_size": len(ITOS),
                "dropout": 0.0,
            },
            "iter_num": 100,
            "best_val_loss": torch.tensor(2.5),
            "config": {},
        },
        out_dir / "ckpt.pt",
    )
    meta = {"vocab_size": len(ITOS), "itos": dict(enumerate(ITOS)), "stoi": {c: i for i, c in enumerate(ITOS)}}
    (out_dir / "meta.pkl").write_bytes(pickle.dumps(meta))


def test_sample_streams_from_a_nanogpt_checkpoint(tmp_path: Path) -> None:
    """One sample takes the streaming path (no batch of texts to print at the end): stdout is the
    prompt and the drawn text, as saved under samples/, then the separator."""
    out_dir = tmp_path / "run"
    write_nanogpt_checkpoint(out_dir)
    config = tmp_path / "cfg.toml"
    write_config(config, out_dir)
    first = cli("sample", "shakespeare", "--exp-config", str(config))
    assert first.returncode == 0, first.stderr
    assert "ckpt.pt" in first.stderr
    (saved,) = (out_dir / "samples").glob("*.txt")
    text = saved.read_text(encoding="utf-8")
    assert text.startswith("First")
    assert len(text) == len("First") + 25
    assert first.stdout == text + "\n---------------\n"
    again = cli("sample", "shakespeare", "--exp-config", str(config))
    assert again.stdout == first.stdout  # seeded


def test_sample_without_checkpoint_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "cfg.toml"
    write_config(config, tmp_path / "empty")
    result = cli("sample", "shakespeare", "--exp-config", str(config))
    assert result.returncode == 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "no checkpoint found" in lines[0]
    assert str(tmp_path / "empty") in lines[0]
