"""A LoRA adapter of our GPT in PEFT's format for the Hugging Face model it was trained on, so that
`PeftModel.from_pretrained(base, folder)` computes what our GPT with the adapter computes.

Our fused layers carry one adapter each: c_attn (q|k|v rows) and SwiGLU's c_fc (gate|up rows).
A fused adapter (A: r x in, B: out x r; delta = scaling * B @ A) splits exactly into one adapter
per projection that shares A and takes B's block of rows, the blocks of `hf.LLAMA_KEY_MAP` (`hf.key_rules`).
GPT-2's Hugging Face names are ours (its Conv1D layers store weights transposed, which PEFT's
`fan_in_fan_out` accounts for; A and B are the same).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import LoraConfig
from safetensors.torch import save
from torch import Tensor

from ml_playground.atomic import write_bytes_atomic, write_text_atomic
from ml_playground.config import GPTConfig, PeftConfig
from ml_playground.interop.arch import counterpart
from ml_playground.interop.hf import key_rules, row_span

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT's prefix of a causal LM's module names in adapter files.
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True, slots=True)
class LoraPair:
    """The adapter of one linear layer: delta weight = scaling * b @ a."""

    a: Tensor  # (r, in)
    b: Tensor  # (out, r)


def hf_modules(module: str, config: GPTConfig) -> list[tuple[str, tuple[int, int] | None]]:
    """The Hugging Face module(s) our linear layer `module` (e.g. transformer.h.0.attn.c_attn) is,
    each with its [start, end) block of our output rows (None: all of them)."""
    if counterpart(config) == "gpt2":
        return [(module, None)]
    weight = f"{module}.weight"
    return [
        (rule.hf.removesuffix(".weight"), row_span(rule.rows, config))
        for rule in key_rules(config)
        if rule.ours == weight
    ]


def peft_state_dict(pairs: dict[str, LoraPair], config: GPTConfig) -> dict[str, Tensor]:
    """PEFT's adapter weights (its names for the Hugging Face model) of our adapters."""
    out: dict[str, Tensor] = {}
    for module, pair in pairs.items():
        for hf_module, span in hf_modules(module, config):
            b = pair.b if span is None else pair.b[span[0] : span[1]]
            # Copies: the projections of one fused layer share A, and a file holds each tensor once.
            out[f"{PEFT_PREFIX}{hf_module}.lora_A.weight"] = pair.a.detach().to("cpu", copy=True)
            out[f"{PEFT_PREFIX}{hf_module}.lora_B.weight"] = b.detach().to("cpu", copy=True).contiguous()
    return out


def target_names(pairs: dict[str, LoraPair], config: GPTConfig) -> list[str]:
    """PEFT `target_modules` selecting exactly these layers: each module's last two name parts
    (`self_attn.q_proj`, `attn.c_proj`; `lm_head`), which PEFT matches as a name suffix."""
    return sorted({".".join(name.split(".")[-2:]) for module in pairs for name, _ in hf_modules(module, config)})


def write_peft_adapter(
    folder: Path, pairs: dict[str, LoraPair], config: GPTConfig, peft: PeftConfig, base_name: str
) -> None:
    """adapter_config.json and adapter_model.safetensors in `folder`, each written atomically."""
    lora = LoraConfig(
        r=peft.r,
        lora_alpha=peft.lora_alpha,
        lora_dropout=peft.lora_dropout,
        bias="none",
        target_modules=target_names(pairs, config),
        fan_in_fan_out=counterpart(config) == "gpt2",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name,
        inference_mode=True,
    )
    settings: dict[str, Any] = lora.to_dict()  # type: ignore[no-untyped-call]  # peft leaves to_dict unannotated
    settings = {key: sorted(value) if isinstance(value, set) else value for key, value in settings.items()}  # pyright: ignore[reportUnknownArgumentType]  # peft's to_dict values
    weights = peft_state_dict(pairs, config)
    write_bytes_atomic(folder / ADAPTER_WEIGHTS_FILE, save(weights, metadata={"format": "pt"}))
    write_text_atomic(folder / ADAPTER_CONFIG_FILE, json.dumps(settings, indent=2, default=str) + "\n")
