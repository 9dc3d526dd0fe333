"""LoRA finetuning of our GPT on a GPT-2 base (our HF export) through the shared trainer: loss
falls, checkpoints hold the adapter alone, PEFT loads the PEFT-format adapter into the Hugging
Face base and computes the merged model's logits; settings and bases LoRA cannot use stop with
one line naming the key."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal

import pytest
import torch

from ml_playground.config import PeftConfig
from ml_playground.config_loader import parse_experiment_config
from ml_playground.errors import ConfigError, ExportError
from ml_playground.finetune import lora
from ml_playground.interop import hf
from ml_playground.model import GPT
from ml_playground.sample import run_sampling
from ml_playground.train.checkpoint import load_checkpoint
from tests.integration.tiny_gpt import CORPUS, char_model
from tests.support.tiny_lora import (
    adapted_hf,
    finetune,
    lora_train_table,
    torch_threads,
    write_base,
    write_finetune_dataset,
)
from tests.support.tiny_training import train_config

pytestmark = pytest.mark.slow

FINETUNE_TEXT = "\n".join(reversed(CORPUS.splitlines())) * 4  # same characters, other text


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the base is a local directory; never reach the hub


@pytest.fixture(autouse=True)
def one_thread() -> Generator[None]:
    with torch_threads(1):  # the CPU is shared; spinning thread pools slow tiny models down
        yield


def test_lora_lowers_loss_saves_peft_adapter_and_merges(tmp_path: Path) -> None:
    base_model, tokenizer, meta = char_model(steps=20)
    base_dir = write_base(base_model, meta, tmp_path / "base")
    write_finetune_dataset(tmp_path / "data", tokenizer, meta, FINETUNE_TEXT)
    val_ids = torch.tensor([tokenizer.encode(FINETUNE_TEXT)[-33:]])
    with torch.no_grad():
        base_loss = base_model(val_ids[:, :-1], val_ids[:, 1:]).loss
    assert base_loss is not None
    table = lora_train_table(tmp_path / "data", base_dir, tmp_path / "run", max_iters=30)
    table["data"] |= {"batch_size": 8, "block_size": 32}
    table["runtime"] |= {"eval_interval": 15, "eval_iters": 4}
    table["peft"] |= {"target_modules": ["c_attn", "c_proj", "c_fc"], "merge_on_save": True}
    raw = {
        "train": table,
        "sample": {
            "runtime": {"out_dir": str(tmp_path / "run" / "merged")},
            "sample": {"temperature": 0, "max_new_tokens": 10},
        },
    }
    cfg = parse_experiment_config(raw, tmp_path / "cfg.toml")
    assert cfg.train is not None
    assert cfg.sample is not None
    result = finetune(cfg.train)
    assert result.best_val_loss < float(base_loss) - 0.1

    # The checkpoint holds the adapter alone (A and B of every adapted layer), its base and settings.
    best = load_checkpoint(tmp_path / "run" / "ckpt_best.pt")
    modules = [
        f"transformer.h.{i}.{name}"
        for i in range(2)
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert sorted(best.model) == sorted(f"{m}.lora_{ab}.default.weight" for m in modules for ab in "AB")
    assert best.extra is not None
    assert best.extra["base_model"] == str(base_dir)
    assert best.extra["peft"]["target_modules"] == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]

    adapter_config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["fan_in_fan_out"] is True  # GPT-2's Conv1D layers
    assert adapter_config["target_modules"] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    adapted = adapted_hf(base_dir, tmp_path / "run" / "adapter")
    merged_dir = tmp_path / "run" / "merged"
    from transformers import GPT2LMHeadModel

    merged: Any = GPT2LMHeadModel.from_pretrained(merged_dir)
    merged.eval()
    ids = torch.tensor([tokenizer.encode(CORPUS[:64])])
    state_dict, config = hf.import_hf_weights(merged_dir)
    ours = GPT(config).eval()
    ours.load_state_dict(state_dict)
    with torch.no_grad():
        adapted_logits = adapted(input_ids=ids).logits
        assert (adapted_logits - merged(input_ids=ids).logits).abs().max().item() <= 1e-4
        assert (adapted_logits - base_model(ids).logits).abs().max().item() > 1e-2  # the adapter changed the model
        assert (ours(ids).logits - adapted_logits).abs().max().item() <= 1e-4

    samples = run_sampling(cfg.sample)
    assert len(samples) == 1
    assert samples[0].startswith("\n")


@pytest.mark.parametrize(
    ("targets", "ours"),
    [
        (["c_attn", "c_proj", "c_fc"], ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")),
        (["q_proj", "v_proj", "k_proj", "o_proj"], ("c_attn", "attn.c_proj")),
        (["down_proj", "up_proj", "gate_proj", "lm_head"], ("c_fc", "mlp.c_proj", "lm_head")),
        (["mlp.c_proj", "c_attn"], ("c_attn", "mlp.c_proj")),
    ],
)
def test_target_modules_are_our_modules_once_loaded(targets: list[str], ours: tuple[str, ...]) -> None:
    assert PeftConfig(target_modules=tuple(targets)).target_modules == ours


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (
            ["q_proj"],
            "train.peft.target_modules: q_proj without k_proj + v_proj: our c_attn fuses q_proj | k_proj | "
            "v_proj into one layer, so name all of them (or c_attn)",
        ),
        (
            ["c_attn", "gate_proj"],
            "train.peft.target_modules: gate_proj without up_proj: our c_fc fuses gate_proj | up_proj into one "
            "layer, so name all of them (or c_fc)",
        ),
        (["c_attn", "wte"], "train.peft.target_modules: unknown module 'wte'; targets are c_attn, attn.c_proj"),
    ],
)
def test_target_modules_that_are_not_whole_layers_are_one_line(targets: list[str], message: str) -> None:
    raw = {"train": lora_train_table(Path("ds"), Path("base"), Path("out"), max_iters=1)}
    raw["train"]["peft"]["target_modules"] = targets
    with pytest.raises(ConfigError) as error:
        parse_experiment_config(raw, Path("cfg.toml"))
    assert str(error.value).startswith(f"cfg.toml: {message}")
    assert "\n" not in str(error.value)


def test_a_tied_head_is_no_target() -> None:
    model, _, _ = char_model(steps=1)
    with pytest.raises(ConfigError, match=r"lm_head shares its weight with the token embedding \(tied\)"):
        lora.inject(model, PeftConfig(target_modules=("lm_head",)))


def test_an_old_hf_model_table_says_what_replaced_it() -> None:
    table = lora_train_table(Path("ds"), Path("base"), Path("out"), max_iters=1)
    del table["model"]
    table["hf_model"] = {"model_name_or_path": "base", "merge_on_save": True}
    with pytest.raises(ConfigError) as error:
        parse_experiment_config({"train": table}, Path("cfg.toml"))
    assert str(error.value) == (
        "cfg.toml: train.hf_model: [train.hf_model] is gone: name the LoRA base in [train.model] init_from "
        "(model_name_or_path's value) and move merge_on_save to [train.peft]"
    )


def test_a_base_of_another_architecture_is_one_line(tmp_path: Path) -> None:
    base_model, tokenizer, meta = char_model(steps=1)
    base_dir = write_base(base_model, meta, tmp_path / "base")
    config = json.loads((base_dir / "config.json").read_text())
    (base_dir / "config.json").write_text(json.dumps(config | {"model_type": "mistral"}))
    write_finetune_dataset(tmp_path / "data", tokenizer, meta, FINETUNE_TEXT)
    cfg = train_config(lora_train_table(tmp_path / "data", base_dir, tmp_path / "run", max_iters=1))
    with pytest.raises(ExportError) as error:
        finetune(cfg)
    assert str(error.value) == (
        f"train.model.init_from = {str(base_dir)!r}: {base_dir / 'config.json'}: model_type: expected one of "
        "'gpt2', 'llama', 'qwen2', 'qwen3', got 'mistral'"
    )


def test_a_truncated_or_missing_base_is_one_line(tmp_path: Path) -> None:
    """A base whose safetensors file was cut short, or a local path that does not exist."""
    base_model, tokenizer, meta = char_model(steps=1)
    base_dir = write_base(base_model, meta, tmp_path / "base")
    weights = base_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    write_finetune_dataset(tmp_path / "data", tokenizer, meta, FINETUNE_TEXT)
    cfg = train_config(lora_train_table(tmp_path / "data", base_dir, tmp_path / "run", max_iters=1))
    with pytest.raises(ExportError) as truncated:
        finetune(cfg)
    assert str(truncated.value).startswith(
        f"train.model.init_from = {str(base_dir)!r}: {weights}: cannot read safetensors weights ("
    )
    missing = tmp_path / "no" / "such" / "base"
    cfg = train_config(lora_train_table(tmp_path / "data", missing, tmp_path / "run2", max_iters=1))
    with pytest.raises(ConfigError) as not_found:
        finetune(cfg)
    assert str(not_found.value) == (
        f"train.model.init_from: {missing} not found (and {str(missing)!r} is not a Hugging Face model id)"
    )
    assert not (tmp_path / "run2" / "ckpt_last.pt").exists()


def test_peft_without_a_base_is_one_line() -> None:
    table = lora_train_table(Path("ds"), Path("base"), Path("out"), max_iters=1)
    del table["model"]
    with pytest.raises(ConfigError) as error:
        parse_experiment_config({"train": table}, Path("cfg.toml"))
    assert str(error.value) == (
        "cfg.toml: train: peft: LoRA needs a base: set train.model.init_from (a Hugging Face model or a checkpoint)"
    )


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_merged_state_dict_computes_what_the_live_adapter_computes(bias: Literal["none", "all", "lora_only"]) -> None:
    """Every trained parameter (A, B and, with `bias`, biases) set away from its start, then merged
    into a plain GPT: the same logits as the GPT with its LoRA layers."""
    model, tokenizer, _ = char_model(steps=1)
    ids = torch.tensor([tokenizer.encode(CORPUS[:64])])
    with torch.no_grad():
        base = model.eval()(ids).logits
    lora.inject(model, PeftConfig(bias=bias, target_modules=("c_attn", "c_proj", "c_fc")))
    trained = lora.adapter_state(model)
    assert any(".bias" in name for name in trained) == (bias != "none")
    torch.manual_seed(1)
    lora.load_adapter_state(model, {name: torch.randn_like(t) * 0.1 for name, t in trained.items()})
    merged = GPT(model.config).eval()
    merged.load_state_dict(lora.merged_state_dict(model, lora.adapter_state(model)))
    with torch.no_grad():
        live = model.eval()(ids).logits
        assert (merged(ids).logits - live).abs().max().item() <= 1e-4
        assert (live - base).abs().max().item() > 1e-2
