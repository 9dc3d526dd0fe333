"""LoRA on a Llama-style and a Qwen3-style export (GQA, untied head) through the shared trainer:
the loss falls, the adapter in PEFT format (fused q|k|v and gate|up adapters split into the base's
projections) loaded by PEFT into the Hugging Face base computes what merged/ (a native checkpoint
and a Hugging Face directory) computes."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.interop import hf
from ml_playground.model import GPT
from ml_playground.train.checkpoint import load_checkpoint
from tests.integration.tiny_gpt import CORPUS, char_model, llama
from tests.support.tiny_lora import (
    LLAMA_TARGETS,
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


@pytest.mark.parametrize(
    ("options", "hf_class", "head"),
    [
        pytest.param({}, "LlamaForCausalLM", [], id="llama"),
        pytest.param({"qk_norm": True}, "Qwen3ForCausalLM", ["lm_head"], id="qwen3-and-head"),
    ],
)
def test_lora_on_a_llama_export_lowers_loss_and_merges(
    tmp_path: Path, options: dict[str, Any], hf_class: str, head: list[str]
) -> None:
    base_model, tokenizer, meta = char_model(steps=20, **llama(n_kv_head=2, tie_embeddings=False, **options))
    base_dir = write_base(base_model, meta, tmp_path / "base")
    write_finetune_dataset(tmp_path / "data", tokenizer, meta, FINETUNE_TEXT)
    val_ids = torch.tensor([tokenizer.encode(FINETUNE_TEXT)[-33:]])
    with torch.no_grad():
        base_loss = base_model(val_ids[:, :-1], val_ids[:, 1:]).loss
    assert base_loss is not None
    table = lora_train_table(tmp_path / "data", base_dir, tmp_path / "run", max_iters=30)
    table["peft"] = {**table["peft"], "target_modules": [*LLAMA_TARGETS, *head]}
    table["data"] = {**table["data"], "batch_size": 8, "block_size": 32}
    result = finetune(train_config(table))
    assert result.best_val_loss < float(base_loss) - 0.1
    adapter_config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["fan_in_fan_out"] is False  # nn.Linear layers
    projections = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    projections += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert adapter_config["target_modules"] == sorted(projections + head)

    from transformers import AutoModelForCausalLM

    adapted = adapted_hf(base_dir, tmp_path / "run" / "adapter")
    merged_dir = tmp_path / "run" / "merged"
    merged_hf: Any = AutoModelForCausalLM.from_pretrained(merged_dir)
    merged_hf.eval()
    assert type(merged_hf).__name__ == hf_class
    checkpoint = load_checkpoint(merged_dir / "ckpt_best.pt")
    assert checkpoint.arch == base_model.config.replace(real_vocab_size=base_model.config.vocab_size)
    ours = GPT(checkpoint.arch).eval()
    ours.load_state_dict(checkpoint.model)

    ids = torch.tensor([tokenizer.encode(CORPUS[:64])])
    with torch.no_grad():
        adapted_logits = adapted(input_ids=ids).logits
        assert (adapted_logits - base_model(ids).logits).abs().max().item() > 1e-2  # the adapter changed it
        assert (merged_hf(input_ids=ids).logits - adapted_logits).abs().max().item() <= 1e-4
        assert (ours(ids).logits - adapted_logits).abs().max().item() <= 1e-4
    assert hf.import_hf_weights(merged_dir)[1] == checkpoint.arch
