"""init_from sources: where a name resolves (file, directory, model id), the hub's one-line errors
(real huggingface_hub against an unreachable 127.0.0.1 endpoint and in offline mode; no network),
and the [train.model] keys a source fixes."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pytest
import torch

from ml_playground.config import GPTConfig, ModelConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import ConfigError
from ml_playground.interop import hf
from ml_playground.interop.source import Source, contradictions, hub_download, load_source, locate
from ml_playground.model import GPT
from ml_playground.train.checkpoint import SCHEMA_VERSION, Checkpoint, save_checkpoint

KEY = "train.model.init_from"
ITOS = sorted(set("First Citizen:\nhear me speak."))


def never(model_id: str) -> Path:
    raise AssertionError(f"download of {model_id!r} was not asked for")


def exported(folder: Path) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=len(ITOS), n_layer=1, n_head=2, n_embd=8))
    hf.export_hf(
        model.state_dict(),
        model.config,
        DatasetMeta(kind="char", vocab_size=len(ITOS), dtype="uint16", itos=ITOS),
        folder,
    )
    return model


def loaded(source: Source) -> GPT:
    model = GPT(source.config)
    source.load_into(model)
    return model


def test_a_local_directory_wins_and_nothing_is_downloaded(tmp_path: Path) -> None:
    model = exported(tmp_path / "gpt2")
    source = load_source(str(tmp_path / "gpt2"), KEY, download=never)
    assert source.config == model.config
    assert all(torch.equal(loaded(source).state_dict()[name], t) for name, t in model.state_dict().items())


def test_a_model_id_goes_to_the_downloader(tmp_path: Path) -> None:
    exported(tmp_path / "snapshot")
    asked: list[str] = []

    def download(model_id: str) -> Path:
        asked.append(model_id)
        return tmp_path / "snapshot"

    source = load_source("someone/tiny-gpt2", KEY, download=download)
    assert asked == ["someone/tiny-gpt2"]
    assert source.config.n_layer == 1


def test_a_missing_path_that_is_no_model_id_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.model\.init_from: .*out/run/ckpt\.pt not found"):
        locate("out/run/ckpt.pt", KEY, never)


def test_a_checkpoint_file_is_a_source_with_its_tokenizer(tmp_path: Path) -> None:
    model = exported(tmp_path / "hf")
    meta = DatasetMeta(kind="char", vocab_size=len(ITOS), dtype="uint16", itos=ITOS)
    checkpoint = Checkpoint(
        schema_version=SCHEMA_VERSION,
        model=model.state_dict(),
        arch=model.config,
        iter_num=3,
        best_val_loss=1.0,
        config={},
        dataset_meta=meta.to_dict(),
    )
    save_checkpoint(tmp_path / "ckpt_best.pt", checkpoint)
    source = load_source(str(tmp_path / "ckpt_best.pt"), KEY, download=never)
    assert source.config == model.config
    assert source.meta == meta


def test_a_nanogpt_ckpt_pt_is_a_source_with_its_meta_pkl(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=len(ITOS), n_layer=1, n_head=2, n_embd=8))
    args = {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 16, "bias": False, "vocab_size": len(ITOS)}
    torch.save(
        {
            "model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
            "model_args": args | {"dropout": 0.0},
            "iter_num": 5000,
            "best_val_loss": 1.5,
            "config": {},
        },
        tmp_path / "ckpt.pt",
    )
    with (tmp_path / "meta.pkl").open("wb") as handle:
        pickle.dump(
            {"vocab_size": len(ITOS), "itos": dict(enumerate(ITOS)), "stoi": {c: i for i, c in enumerate(ITOS)}}, handle
        )
    source = load_source(str(tmp_path / "ckpt.pt"), KEY, download=never)
    assert source.config == model.config
    assert source.meta is not None
    assert source.meta.itos == ITOS
    assert all(torch.equal(loaded(source).state_dict()[name], t) for name, t in model.state_dict().items())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_hub_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with pytest.raises(ConfigError) as info:
        hub_download("gpt2")
    assert "\n" not in str(info.value)
    assert "init_from 'gpt2': cannot download it from the Hugging Face hub" in str(info.value)


def test_offline_mode_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"^init_from 'gpt2-medium': cannot download it .*needs the network"):
        hub_download("gpt2-medium")


def test_keys_left_out_take_the_sources_values() -> None:
    source = GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, bias=True)
    assert contradictions(ModelConfig(init_from="gpt2", dropout=0.1), source) == []
    assert contradictions(ModelConfig(init_from="gpt2", n_layer=12, bias=True), source) == []
    assert contradictions(ModelConfig(init_from="gpt2", block_size=512, norm="rmsnorm"), source) == [
        "train.model.block_size = 512 (source: 1024)",
        "train.model.norm = 'rmsnorm' (source: 'layernorm')",
    ]
    assert contradictions(ModelConfig(init_from="gpt2", vocab_multiple=128, vocab_size=50304), source) == [
        "train.model.vocab_size = 50304 (source: 50257 tokens)",
        "train.model.vocab_multiple = 128 (source: 50257 rows)",
    ]
    assert contradictions(ModelConfig(init_from="gpt2", vocab_multiple=1, mlp_multiple=32), source) == []
    # A key set is checked even at its default value; sizes that follow a key are checked when set.
    assert contradictions(ModelConfig(init_from="gpt2", n_head=6, n_kv_head=4), source) == [
        "train.model.n_head = 6 (source: 12)",
        "train.model.n_kv_head = 4 (source: 12)",
    ]
