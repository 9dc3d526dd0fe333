"""The schema's own rules (config.py), built directly; config_loader's tests build it from TOML."""

from __future__ import annotations

import pytest

from ml_playground.config import lora_modules


def test_hugging_face_lora_names_map_onto_our_fused_modules() -> None:
    names = ("down_proj", "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "o_proj")
    assert lora_modules(names) == ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")
    assert lora_modules(("c_proj", "lm_head")) == ("attn.c_proj", "mlp.c_proj", "lm_head")


def test_part_of_a_fused_module_and_unknown_names_are_refused_together() -> None:
    with pytest.raises(ValueError, match="q_proj without k_proj \\+ v_proj") as info:
        lora_modules(("q_proj", "wte"))
    assert "unknown module 'wte'" in str(info.value)
