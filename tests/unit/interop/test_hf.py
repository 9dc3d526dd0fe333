"""interop.hf: the key map both ways, config.json and tokenizers that encode like ours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer

from ml_playground.config import GPTConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import ExportError
from ml_playground.interop import hf
from ml_playground.model import GPT
from ml_playground.tokenizers import CharTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\tSpeak,  speak!  "


LLAMA: dict[str, Any] = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "mlp_hidden": 24, "n_head": 4}


def tiny(bias: bool, vocab_size: int = 40, **options: Any) -> GPT:
    torch.manual_seed(0)
    fields: dict[str, Any] = {
        "block_size": 16,
        "vocab_size": vocab_size,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 8,
        "bias": bias,
    }
    fields.update(options)
    return GPT(GPTConfig(**fields))


@pytest.mark.parametrize("bias", [True, False])
def test_key_map_round_trip_is_exact(bias: bool) -> None:
    model = tiny(bias)
    ours = model.state_dict()
    converted = hf.to_hf_state_dict(ours, model.config)
    back = hf.from_hf_state_dict(converted, model.config, "test")
    assert set(back) == set(ours)
    for name, tensor in ours.items():
        assert torch.equal(back[name], tensor), name


def test_linear_weights_are_transposed_to_conv1d_layout() -> None:
    model = tiny(True)
    converted = hf.to_hf_state_dict(model.state_dict(), model.config)
    ours = model.state_dict()["transformer.h.1.mlp.c_fc.weight"]  # nn.Linear: (out, in) = (32, 8)
    assert converted["transformer.h.1.mlp.c_fc.weight"].shape == (8, 32)  # Conv1D: (in, out)
    assert torch.equal(converted["transformer.h.1.mlp.c_fc.weight"], ours.t())
    assert torch.equal(converted["transformer.wte.weight"], model.state_dict()["transformer.wte.weight"])
    assert "lm_head.weight" not in converted  # tied to wte, stored once


def test_missing_biases_are_exported_as_zeros_and_detected_on_import() -> None:
    model = tiny(False)
    converted = hf.to_hf_state_dict(model.state_dict(), model.config)
    assert converted["transformer.h.0.attn.c_attn.bias"].shape == (24,)
    assert converted["transformer.h.0.mlp.c_fc.bias"].shape == (32,)
    assert converted["transformer.ln_f.bias"].shape == (8,)
    assert hf.biases_are_zero(converted, model.config)
    converted["transformer.h.1.ln_2.bias"][3] = 0.5
    assert not hf.biases_are_zero(converted, model.config)


def test_unknown_tensor_is_an_error() -> None:
    model = tiny(True)
    state = dict(model.state_dict())
    state["transformer.extra.weight"] = torch.zeros(1)
    with pytest.raises(ExportError, match=r"transformer\.extra\.weight"):
        hf.to_hf_state_dict(state, model.config)


def test_untied_head_is_refused_on_import() -> None:
    model = tiny(True)
    converted = hf.to_hf_state_dict(model.state_dict(), model.config)
    converted["lm_head.weight"] = torch.ones_like(converted["transformer.wte.weight"])
    with pytest.raises(ExportError, match=r"lm_head\.weight differs from the token embedding"):
        hf.from_hf_state_dict(converted, model.config, "x.safetensors")


def char_meta(text: str) -> DatasetMeta:
    itos = sorted(set(text))
    return DatasetMeta(kind="char", vocab_size=len(itos), dtype="uint16", itos=itos)


def test_export_writes_a_loadable_directory_and_imports_back(tmp_path: Path) -> None:
    model = tiny(False, vocab_size=len(set(TEXT)))
    meta = char_meta(TEXT)
    hf.export_hf(model.state_dict(), model.config, meta, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] == 16
    assert config["activation_function"] == "gelu"
    assert config["eos_token_id"] is None  # a char vocabulary has no end-of-text token
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode("Speak").ids == CharTokenizer(
        meta.itos or []
    ).encode("Speak")
    state_dict, config = hf.import_hf_weights(tmp_path)
    assert config == model.config
    assert hf.meta_from_tokenizer_json(tmp_path / hf.TOKENIZER_FILE).itos == meta.itos
    for name, tensor in model.state_dict().items():
        assert torch.equal(state_dict[name], tensor), name


def test_gpt2_export_writes_slow_tokenizer_files(tmp_path: Path) -> None:
    model = tiny(True, vocab_size=hf.GPT2_VOCAB_SIZE)
    meta = DatasetMeta(kind="tiktoken", vocab_size=hf.GPT2_VOCAB_SIZE, dtype="uint16", encoding="gpt2")
    hf.export_hf(model.state_dict(), model.config, meta, tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert vocab["<|endoftext|>"] == 50256
    assert (tmp_path / "merges.txt").read_text().startswith("#version")
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 50256
    assert hf.meta_from_tokenizer_json(tmp_path / hf.TOKENIZER_FILE).encoding == "gpt2"


def test_import_refuses_other_architectures(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral", "hidden_size": 8}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        ExportError, match="model_type: expected one of 'gpt2', 'llama', 'qwen2', 'qwen3', got 'mistral'"
    ):
        hf.import_hf_weights(tmp_path)


def test_gpt2_mlp_width_and_norm_eps_are_exported_and_imported(tmp_path: Path) -> None:
    model = tiny(False, vocab_size=len(set(TEXT)), mlp_hidden=20, norm_eps=1e-6)
    hf.export_hf(model.state_dict(), model.config, char_meta(TEXT), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["n_inner"], config["layer_norm_epsilon"]) == (20, 1e-6)
    assert hf.import_hf_weights(tmp_path)[1] == model.config


# --- Llama / Qwen3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"n_kv_head": 2}, {"tie_embeddings": False}, {"qk_norm": True, "n_kv_head": 1, "tie_embeddings": False}],
)
def test_llama_key_map_round_trip_is_exact(options: dict[str, Any]) -> None:
    model = tiny(False, **(LLAMA | options))
    ours = model.state_dict()
    converted = hf.to_hf_state_dict(ours, model.config)
    assert all(name.startswith(("model.", "lm_head.")) for name in converted)
    assert ("lm_head.weight" in converted) == (not model.config.tie_embeddings)  # tied: stored once
    back = hf.from_hf_state_dict(converted, model.config, "test")
    assert set(back) == set(ours)
    for name, tensor in ours.items():
        assert torch.equal(back[name], tensor), name


def test_llama_fused_weights_are_cut_into_their_row_blocks() -> None:
    model = tiny(False, **(LLAMA | {"n_kv_head": 2, "qk_norm": True}))
    ours = model.state_dict()
    converted = hf.to_hf_state_dict(ours, model.config)
    qkv = ours["transformer.h.1.attn.c_attn.weight"]  # (4 + 2*2 heads) * 2 rows: q 8, k 4, v 4
    attn = "model.layers.1.self_attn."
    assert torch.equal(converted[attn + "q_proj.weight"], qkv[:8])
    assert torch.equal(converted[attn + "k_proj.weight"], qkv[8:12])
    assert torch.equal(converted[attn + "v_proj.weight"], qkv[12:])
    assert torch.equal(converted[attn + "q_norm.weight"], ours["transformer.h.1.attn.q_norm.weight"])
    gate_up = ours["transformer.h.0.mlp.c_fc.weight"]  # (2 * 24, 8): gate rows, then up rows
    assert torch.equal(converted["model.layers.0.mlp.gate_proj.weight"], gate_up[:24])
    assert torch.equal(converted["model.layers.0.mlp.up_proj.weight"], gate_up[24:])
    assert torch.equal(converted["model.layers.0.mlp.down_proj.weight"], ours["transformer.h.0.mlp.c_proj.weight"])
    assert torch.equal(converted["model.norm.weight"], ours["transformer.ln_f.weight"])


def test_llama_import_checks_row_counts_and_tying() -> None:
    model = tiny(False, **(LLAMA | {"n_kv_head": 2}))
    converted = hf.to_hf_state_dict(model.state_dict(), model.config)
    converted["lm_head.weight"] = torch.ones_like(converted["model.embed_tokens.weight"])
    with pytest.raises(ExportError, match=r"lm_head\.weight differs from the token embedding"):
        hf.from_hf_state_dict(converted, model.config, "x.safetensors")
    del converted["lm_head.weight"]
    converted["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 8)
    with pytest.raises(ExportError, match=r"k_proj\.weight has 8 rows, config\.json gives 4"):
        hf.from_hf_state_dict(converted, model.config, "x.safetensors")


@pytest.mark.parametrize(
    ("options", "architecture"), [({}, "LlamaForCausalLM"), ({"qk_norm": True}, "Qwen3ForCausalLM")]
)
def test_llama_config_json_states_every_option(options: dict[str, Any], architecture: str) -> None:
    chosen: dict[str, Any] = LLAMA | options | {"n_kv_head": 2, "rope_theta": 500.0, "norm_eps": 1e-5}
    model = tiny(False, **chosen)
    config = hf.hf_config(model.config, char_meta(TEXT))
    assert config["architectures"] == [architecture]
    assert config["model_type"] == ("qwen3" if options else "llama")
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (8, 24, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 2)
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 500.0}
    assert config["rms_norm_eps"] == 1e-5
    assert config["tie_word_embeddings"] is True
    assert config["bos_token_id"] is None
    assert config["eos_token_id"] is None


@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "n_kv_head": 2, "tie_embeddings": False}])
def test_llama_export_imports_back(tmp_path: Path, options: dict[str, Any]) -> None:
    model = tiny(False, vocab_size=len(set(TEXT)), **(LLAMA | options))
    hf.export_hf(model.state_dict(), model.config, char_meta(TEXT), tmp_path)
    state_dict, config = hf.import_hf_weights(tmp_path)
    assert config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(state_dict[name], tensor), name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_act": "gelu"}, "hidden_act: our SwiGLU uses 'silu'"),
        ({"attention_bias": True}, "attention_bias: our Llama-style GPT has none"),
        ({"mlp_bias": True}, "mlp_bias: our Llama-style GPT has none"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type 'yarn'"),
        ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
        ({"use_sliding_window": True}, "use_sliding_window: our Llama-style GPT has none"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types: our GPT has full attention"),
        ({"num_key_value_heads": 3}, r"n_head \(4\) must be divisible by n_kv_head \(3\)"),
    ],
)
def test_llama_import_refuses_what_our_gpt_cannot_compute(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    model = tiny(False, vocab_size=len(set(TEXT)), **LLAMA)
    hf.export_hf(model.state_dict(), model.config, char_meta(TEXT), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=message):
        hf.import_hf_weights(tmp_path)


@pytest.mark.parametrize("options", [LLAMA | {"mlp": "relu2"}, {"logit_softcap": 30.0}, {"tie_embeddings": False}])
def test_export_without_a_counterpart_writes_nothing(tmp_path: Path, options: dict[str, Any]) -> None:
    vocab = len(set(TEXT))
    model = tiny(False, vocab, **options)
    with pytest.raises(ExportError, match=r"no equivalent in Hugging Face / llama\.cpp for train\.model\."):
        hf.export_hf(model.state_dict(), model.config, char_meta(TEXT), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_other_tiktoken_encodings_are_refused() -> None:
    meta = DatasetMeta(kind="tiktoken", vocab_size=100277, dtype="uint32", encoding="cl100k_base")
    with pytest.raises(ExportError, match="cl100k_base"):
        hf.tokenizer_for(meta)
