"""interop.gguf: tensor names, vocabularies and metadata, read back with the `gguf` reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

from ml_playground.config import GPTConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import ExportError
from ml_playground.interop import gguf as writer
from ml_playground.interop.hf import key_rules
from ml_playground.model import GPT


def char_meta(itos: list[str]) -> DatasetMeta:
    return DatasetMeta(kind="char", vocab_size=len(itos), dtype="uint16", itos=itos)


def tiny(vocab_size: int, bias: bool = False, **options: Any) -> GPT:
    torch.manual_seed(0)
    fields: dict[str, Any] = {
        "block_size": 16,
        "vocab_size": vocab_size,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "bias": bias,
    }
    fields.update(options)
    return GPT(GPTConfig(**fields))


LLAMA: dict[str, Any] = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "mlp_hidden": 48, "n_head": 4}


def field(reader: gguf.GGUFReader, key: str) -> Any:
    value = reader.fields[key]
    if value.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value.parts[value.data[0]]).decode()
    return value.parts[-1][0].item()


def array_of(tensor: Any, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    return np.asarray(tensor.data, dtype=np.float32).reshape(shape)


def test_every_tensor_has_one_gguf_name() -> None:
    model = tiny(10, bias=True)
    gguf_names = {rule.ours: rule.gguf for rule in key_rules(model.config)}
    names = [gguf_names[name] for name in model.state_dict() if name != "lm_head.weight"]
    assert len(names) == len(set(names))
    assert gguf_names["transformer.h.1.attn.c_attn.weight"] == "blk.1.attn_qkv.weight"
    assert "lm_head.weight" not in gguf_names  # tied: llama.cpp reuses token_embd.weight


def test_char_vocab_uses_byte_level_tokens_and_merges_for_two_byte_characters() -> None:
    vocab = writer.char_vocab(["\n", " ", "a", "ä"])
    assert vocab.tokens == ["Ċ", "Ġ", "a", "Ã¤"]
    assert vocab.merges == ["Ã ¤"]
    with pytest.raises(ExportError, match="3 UTF-8 bytes"):
        writer.char_vocab(["a", "€"])


def test_padded_model_is_written_with_the_tokenizer_vocabulary_only(tmp_path: Path) -> None:
    itos = list("abcdef \n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, real_vocab_size=len(itos)))
    path = tmp_path / "m.gguf"
    writer.write_gguf(path, model.state_dict(), model.config, char_meta(itos), ftype="f32", name="tiny")
    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert [bytes(tokens.parts[i]).decode() for i in tokens.data] == [writer.byte_level(c) for c in itos]
    embd = {t.name: t for t in reader.tensors}["token_embd.weight"]
    expected = model.wte.weight[: len(itos)].detach().numpy()
    assert np.array_equal(np.asarray(embd.data, dtype=np.float32).reshape(expected.shape), expected)
    with pytest.raises(ExportError, match="smaller than the tokenizer"):
        writer.write_gguf(path, model.state_dict(), model.config, char_meta(list("x") * 65), ftype="f32", name="t")


@pytest.mark.parametrize("ftype", ["f32", "f16"])
def test_written_file_has_gpt2_metadata_and_our_weights(tmp_path: Path, ftype: writer.FloatType) -> None:
    itos = list("abcdef \n")
    model = tiny(len(itos))
    path = tmp_path / "m.gguf"
    writer.write_gguf(path, model.state_dict(), model.config, char_meta(itos), ftype=ftype, name="tiny")
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "gpt2"
    assert int(reader.fields["gpt2.context_length"].parts[-1][0]) == 16
    assert int(reader.fields["gpt2.block_count"].parts[-1][0]) == 2
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    qkv = tensors["blk.0.attn_qkv.weight"]
    expected = model.state_dict()["transformer.h.0.attn.c_attn.weight"].numpy()
    assert np.allclose(np.asarray(qkv.data, dtype=np.float32).reshape(expected.shape), expected, atol=1e-3)
    assert qkv.tensor_type == (gguf.GGMLQuantizationType.F16 if ftype == "f16" else gguf.GGMLQuantizationType.F32)
    bias = tensors["blk.1.ffn_up.bias"]  # bias=False: written as zeros, kept in float32
    assert bias.tensor_type == gguf.GGMLQuantizationType.F32
    assert not np.asarray(bias.data).any()


def test_halves_to_pairs_interleaves_the_two_halves_of_each_head() -> None:
    rows = torch.arange(12.0).reshape(12, 1)  # 2 heads of size 6: halves [0,1,2 | 3,4,5], [6,7,8 | 9,10,11]
    paired = writer.halves_to_pairs(rows, 2).flatten()
    assert torch.equal(paired, torch.tensor([0.0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]))


@pytest.mark.parametrize("tied", [True, False])
def test_llama_file_has_llama_metadata_and_reordered_query_key_rows(tmp_path: Path, tied: bool) -> None:
    itos = list("abcdef \n")
    options: dict[str, Any] = LLAMA | {"n_kv_head": 2, "rope_theta": 500.0, "norm_eps": 1e-6, "tie_embeddings": tied}
    model = tiny(len(itos), **options)
    path = tmp_path / "m.gguf"
    writer.write_gguf(path, model.state_dict(), model.config, char_meta(itos), ftype="f32", name="tiny")
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.attention.head_count") == 4
    assert field(reader, "llama.attention.head_count_kv") == 2
    assert field(reader, "llama.feed_forward_length") == 48
    assert field(reader, "llama.rope.freq_base") == 500.0
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    tensors = {t.name: t for t in reader.tensors}
    assert ("output.weight" in tensors) == (not tied)
    qkv = model.state_dict()["transformer.h.0.attn.c_attn.weight"]  # q 32 rows, k 16, v 16
    assert np.array_equal(array_of(tensors["blk.0.attn_q.weight"], (32, 32)), writer.halves_to_pairs(qkv[:32], 4))
    assert np.array_equal(array_of(tensors["blk.0.attn_k.weight"], (16, 32)), writer.halves_to_pairs(qkv[32:48], 2))
    assert np.array_equal(array_of(tensors["blk.0.attn_v.weight"], (16, 32)), qkv[48:].numpy())
    gate_up = model.state_dict()["transformer.h.1.mlp.c_fc.weight"]
    assert np.array_equal(array_of(tensors["blk.1.ffn_gate.weight"], (48, 32)), gate_up[:48].numpy())
    assert np.array_equal(array_of(tensors["blk.1.ffn_up.weight"], (48, 32)), gate_up[48:].numpy())


def test_qwen3_file_keeps_rows_in_order_and_has_qk_norms(tmp_path: Path) -> None:
    itos = list("abcdef \n")
    model = tiny(len(itos), **(LLAMA | {"qk_norm": True}))
    path = tmp_path / "m.gguf"
    writer.write_gguf(path, model.state_dict(), model.config, char_meta(itos), ftype="f16", name="tiny")
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.architecture") == "qwen3"
    tensors = {t.name: t for t in reader.tensors}
    qkv = model.state_dict()["transformer.h.0.attn.c_attn.weight"]
    assert np.allclose(array_of(tensors["blk.0.attn_k.weight"], (32, 32)), qkv[32:64].numpy(), atol=1e-3)  # neox rope
    norm = tensors["blk.1.attn_q_norm.weight"]
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32  # norms stay float32 in f16 files
    assert np.array_equal(array_of(norm, (8,)), model.state_dict()["transformer.h.1.attn.q_norm.weight"].numpy())


def test_no_file_is_written_for_an_architecture_without_a_counterpart(tmp_path: Path) -> None:
    options: dict[str, Any] = LLAMA | {"mlp": "relu2"}
    model = tiny(8, **options)
    path = tmp_path / "m.gguf"
    with pytest.raises(ExportError, match=r"train\.model\.mlp = 'relu2'"):
        writer.write_gguf(path, model.state_dict(), model.config, char_meta(list("abcdef \n")), ftype="f32", name="t")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options", [{}, LLAMA])
def test_a_tensor_without_a_gguf_name_is_refused(tmp_path: Path, options: dict[str, Any]) -> None:
    model = tiny(8, **options)
    weights = model.state_dict() | {"transformer.extra.weight": torch.zeros(1)}
    path = tmp_path / "m.gguf"
    with pytest.raises(ExportError, match=r"tensors without a GGUF name: transformer\.extra\.weight"):
        writer.write_gguf(path, weights, model.config, char_meta(list("abcdef \n")), ftype="f32", name="t")
    assert list(tmp_path.iterdir()) == []
