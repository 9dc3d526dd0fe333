"""LoRA finetuning on CUDA (bfloat16 autocast; our GPT with its LoRA layers compiled) through the
one run path: the loss falls below the base's, the adapter loads in PEFT, and the merged model
equals base + adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.finetune.lora import LoRA
from ml_playground.interop import hf
from ml_playground.model import GPT
from ml_playground.train.loop import train
from tests.cuda.device import DEVICE, DTYPE
from tests.cuda.observe import assert_ran, watch_mode
from tests.integration.tiny_gpt import CORPUS, char_model
from tests.support.tiny_lora import adapted_hf, lora_train_table, write_base, write_finetune_dataset
from tests.support.tiny_training import read_scalars, train_config

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the base is a local directory; never reach the hub


def test_lora_on_cuda_lowers_loss_and_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base_model, tokenizer, meta = char_model(steps=20)
    base_dir = write_base(base_model, meta, tmp_path / "base")
    text = "\n".join(reversed(CORPUS.splitlines())) * 4  # same characters, other text
    data = write_finetune_dataset(tmp_path / "data", tokenizer, meta, text)
    table = lora_train_table(data, base_dir, tmp_path / "run", max_iters=30)
    table["data"] |= {"batch_size": 8, "block_size": 32}
    table["runtime"] |= {"device": DEVICE, "dtype": DTYPE, "eval_interval": 15, "compile": True}
    table["peft"] |= {"merge_on_save": True}
    cfg = train_config(table)
    mode = LoRA(cfg)
    calls = watch_mode(mode, monkeypatch)
    result = train(cfg, mode)  # what finetune (and `make train` for a LoRA config) runs
    assert_ran(calls, device=DEVICE, dtype=getattr(torch, DTYPE), compiled=True)

    val = read_scalars(tmp_path / "run" / "logs" / "tb")["val/loss"]
    assert [step for step, _ in val] == [0, 15, 30]
    assert result.best_val_loss < val[0][1] - 0.1  # iter 0 evaluates the base (a fresh adapter is a no-op)

    from transformers import GPT2LMHeadModel

    ids = torch.tensor([tokenizer.encode(CORPUS[:64])])
    adapted = adapted_hf(base_dir, tmp_path / "run" / "adapter")
    merged: Any = GPT2LMHeadModel.from_pretrained(tmp_path / "run" / "merged")
    untouched: Any = GPT2LMHeadModel.from_pretrained(base_dir)
    with torch.no_grad():
        adapted_logits = adapted(input_ids=ids).logits
        merged_logits = merged.eval()(input_ids=ids).logits
        base_logits = untouched.eval()(input_ids=ids).logits
    assert (adapted_logits - merged_logits).abs().max().item() <= 1e-4
    assert (adapted_logits - base_logits).abs().max().item() > 1e-2  # the adapter changed the model

    state_dict, config = hf.import_hf_weights(tmp_path / "run" / "merged")
    ours = GPT(config)
    ours.load_state_dict(state_dict)
    with torch.no_grad():
        assert (ours.eval()(ids).logits - merged_logits).abs().max().item() <= 1e-4
