"""LoRA finetuning of our HF export on the shared trainer loop: loss falls, PEFT loads the
adapter, and the merged model equals base + adapter."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml_playground.config import HFModelConfig, PeftConfig
from ml_playground.config_loader import parse_experiment_config
from ml_playground.data.meta import write_meta
from ml_playground.errors import ConfigError
from ml_playground.finetune import lora
from ml_playground.interop import hf
from ml_playground.model import GPT
from ml_playground.runtime import torch_threads
from ml_playground.sample import run_sampling
from tests.integration.tiny_gpt import CORPUS, char_model

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the base is a local directory; never reach the hub


def write_dataset(folder: Path, ids: list[int], meta: Any) -> None:
    folder.mkdir(parents=True)
    split = int(len(ids) * 0.8)
    np.array(ids[:split], dtype="<u2").tofile(folder / "train.bin")
    np.array(ids[split:], dtype="<u2").tofile(folder / "val.bin")
    write_meta(folder / "meta.json", meta)


@pytest.fixture(autouse=True)
def one_thread() -> Generator[None]:
    with torch_threads(1):  # the CPU is shared; spinning thread pools slow tiny models down
        yield


def test_lora_lowers_loss_saves_peft_adapter_and_merges(tmp_path: Path) -> None:
    base_model, tokenizer, meta = char_model(steps=20)
    base_dir = tmp_path / "base"
    hf.export_hf(base_model.state_dict(), base_model.config, meta, base_dir)
    finetune_text = "\n".join(reversed(CORPUS.splitlines())) * 4  # same characters, other text
    write_dataset(tmp_path / "data", tokenizer.encode(finetune_text), meta)
    val_ids = torch.tensor([tokenizer.encode(finetune_text)[-33:]])
    with torch.no_grad():
        base_loss = base_model(val_ids[:, :-1], val_ids[:, 1:]).loss
    assert base_loss is not None
    raw = {
        "train": {
            "data": {"dataset_dir": str(tmp_path / "data"), "batch_size": 8, "block_size": 32},
            "runtime": {
                "out_dir": str(tmp_path / "run"),
                "max_iters": 30,
                "eval_interval": 15,
                "eval_iters": 4,
                "log_interval": 5,
            },
            "optim": {"learning_rate": 1e-2},
            "schedule": {"warmup_iters": 0, "lr_decay_iters": 30, "min_lr": 1e-3},
            "hf_model": {"model_name_or_path": str(base_dir), "merge_on_save": True},
            "peft": {"r": 4, "lora_alpha": 8},
        },
        "sample": {
            "runtime": {"out_dir": str(tmp_path / "run" / "merged")},
            "sample": {"temperature": 0, "max_new_tokens": 10},
        },
    }
    cfg = parse_experiment_config(raw, tmp_path / "cfg.toml")
    assert cfg.train is not None
    assert cfg.sample is not None
    result = lora.run_finetune(cfg.train)
    assert result.last_eval is not None
    first = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert first["fan_in_fan_out"] is True  # GPT-2 Conv1D layers
    assert result.best_val_loss < float(base_loss) - 0.1

    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    base = GPT2LMHeadModel.from_pretrained(base_dir)
    with lora.peft_compat():
        adapted = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter")).eval()
    merged_dir = tmp_path / "run" / "merged"
    merged: Any = GPT2LMHeadModel.from_pretrained(merged_dir)
    merged.eval()
    ids = torch.tensor([tokenizer.encode(CORPUS[:64])])
    with torch.no_grad():
        adapted_logits = adapted(input_ids=ids).logits
        merged_logits = merged(input_ids=ids).logits
        untouched: Any = GPT2LMHeadModel.from_pretrained(base_dir)
        base_logits = untouched(input_ids=ids).logits
    assert (adapted_logits - merged_logits).abs().max().item() <= 1e-4
    assert (adapted_logits - base_logits).abs().max().item() > 1e-2  # the adapter changed the model

    ours = GPT(hf.import_hf(merged_dir).config)
    ours.load_state_dict(hf.import_hf(merged_dir).state_dict)
    with torch.no_grad():
        assert (ours.eval()(ids).logits - merged_logits).abs().max().item() <= 1e-4

    samples = run_sampling(cfg.sample)
    assert len(samples) == 1
    assert samples[0].startswith("\n")


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["lm_head"], r"lm_head shares its weight with the token embedding \(tied\)"),
        (["c_attn", "q_proj"], r"no module named q_proj in the base model"),
    ],
)
def test_adapter_targets_are_checked_against_the_base(tmp_path: Path, targets: list[str], message: str) -> None:
    base_model, _, meta = char_model(steps=1)
    base_dir = tmp_path / "base"
    hf.export_hf(base_model.state_dict(), base_model.config, meta, base_dir)
    base = lora.load_base(HFModelConfig(model_name_or_path=str(base_dir)))
    with pytest.raises(ConfigError, match=message):
        lora.with_adapter(base, PeftConfig(target_modules=tuple(targets)))
