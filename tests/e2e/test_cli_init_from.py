"""`ml-playground train` / `sample` with init_from in real subprocesses: a local Hugging Face
directory finetunes and samples as it is; a model id downloads its config, weights and tokenizer
from a hub (a tiny one on 127.0.0.1, tests/support/tiny_hub.py) only when asked, then works offline
from the cache; a contradicting key and a model id offline are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ml_playground.config import GPTConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.interop import hf
from ml_playground.model import GPT
from tests.support.tiny_hub import tiny_hub
from tests.support.tiny_training import TEXT, write_char_dataset

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, home: Path, endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    # Its own huggingface_hub cache; offline unless a (local) hub endpoint is given.
    env = os.environ | {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    if endpoint is not None:
        env |= {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint}
    return subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def export_source(folder: Path) -> None:
    itos = sorted(set(TEXT))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=len(itos), n_layer=1, n_head=2, n_embd=16))
    meta = DatasetMeta(kind="char", vocab_size=len(itos), dtype="uint16", itos=itos)
    hf.export_hf(model.state_dict(), model.config, meta, folder)


def write_config(path: Path, tmp_path: Path, init_from: str, model_keys: str = "") -> None:
    path.write_text(
        f"""
[train.model]
init_from = "{init_from}"
{model_keys}

[train.data]
dataset_dir = "{tmp_path / "data"}"
batch_size = 4
block_size = 32

[train.schedule]
warmup_iters = 1
lr_decay_iters = 4

[train.runtime]
out_dir = "{tmp_path / "out"}"
max_iters = 4
eval_interval = 2
eval_iters = 2
peak_flops = 1e12

[sample.runtime]
out_dir = "{tmp_path / "samples"}"
init_from = "{init_from}"

[sample.sample]
start = "First"
max_new_tokens = 10
""",
        encoding="utf-8",
    )


def test_train_and_sample_from_a_local_hugging_face_directory(tmp_path: Path) -> None:
    write_char_dataset(tmp_path / "data")
    export_source(tmp_path / "hf")
    config = tmp_path / "cfg.toml"
    write_config(config, tmp_path, str(tmp_path / "hf"))
    trained = cli("train", "shakespeare", "--exp-config", str(config), home=tmp_path / "hf_home")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "out" / "ckpt_last.pt").is_file()
    sampled = cli("sample", "shakespeare", "--exp-config", str(config), home=tmp_path / "hf_home")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("First")
    assert f"sampling from init_from {str(tmp_path / 'hf')!r}" in sampled.stderr


def test_a_contradicting_key_is_one_line_with_exit_2(tmp_path: Path) -> None:
    write_char_dataset(tmp_path / "data")
    export_source(tmp_path / "hf")
    config = tmp_path / "cfg.toml"
    write_config(config, tmp_path, str(tmp_path / "hf"), model_keys="n_embd = 64")
    result = cli("train", "shakespeare", "--exp-config", str(config), home=tmp_path / "hf_home")
    assert result.returncode == 2
    (last,) = result.stderr.strip().splitlines()[-1:]
    assert last.startswith("error: train.model: keys contradict init_from")
    assert "train.model.n_embd = 64 (source: 16)" in last


def test_a_model_id_offline_is_one_line(tmp_path: Path) -> None:
    write_char_dataset(tmp_path / "data")
    config = tmp_path / "cfg.toml"
    write_config(config, tmp_path, "gpt2")
    result = cli("sample", "shakespeare", "--exp-config", str(config), home=tmp_path / "hf_home")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "init_from 'gpt2': cannot download it from the Hugging Face hub" in result.stderr.strip().splitlines()[-1]


def test_a_model_id_is_downloaded_only_when_asked_then_found_offline(tmp_path: Path) -> None:
    write_char_dataset(tmp_path / "data")
    export_source(tmp_path / "hub" / "someone" / "tiny-gpt")
    (tmp_path / "hub" / "someone" / "tiny-gpt" / "pytorch_model.bin").write_bytes(b"not fetched")
    config = tmp_path / "cfg.toml"
    write_config(config, tmp_path, "someone/tiny-gpt")
    log = tmp_path / "hub.log"
    with tiny_hub(tmp_path / "hub", log) as endpoint:
        sampled = cli(
            "sample", "shakespeare", "--exp-config", str(config), home=tmp_path / "hf_home", endpoint=endpoint
        )
        # A repository the hub does not have: one line.
        write_config(config, tmp_path, "someone/absent")
        absent = cli("sample", "shakespeare", "--exp-config", str(config), home=tmp_path / "hf_home", endpoint=endpoint)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("First")
    fetched = log.read_text(encoding="utf-8")
    assert "GET /someone/tiny-gpt/resolve/" in fetched
    assert "model.safetensors" in fetched
    assert "pytorch_model.bin" not in fetched  # config, safetensors and tokenizer files only
    assert absent.returncode == 2
    assert "init_from 'someone/absent': cannot download it" in absent.stderr.strip().splitlines()[-1]
    # The hub is gone; the cached model still trains offline, every weight finetuned.
    write_config(config, tmp_path, "someone/tiny-gpt")
    trained = cli("train", "shakespeare", "--exp-config", str(config), home=tmp_path / "hf_home")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "out" / "ckpt_last.pt").is_file()
