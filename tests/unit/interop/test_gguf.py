"""interop.gguf: tensor names, vocabularies and metadata, read back with the `gguf` reader."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import ExportError
from ml_playground.interop import gguf as writer
from ml_playground.model import GPT, GPTConfig


def char_meta(itos: list[str]) -> DatasetMeta:
    return DatasetMeta(kind="char", vocab_size=len(itos), dtype="uint16", itos=itos)


def tiny(vocab_size: int, bias: bool = False) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, bias=bias))


def test_every_tensor_has_one_gguf_name() -> None:
    model = tiny(10, bias=True)
    names = [writer.gguf_name(name, 2) for name in model.state_dict() if name != "lm_head.weight"]
    assert len(names) == len(set(names))
    assert writer.gguf_name("transformer.h.1.attn.c_attn.weight", 2) == "blk.1.attn_qkv.weight"
    with pytest.raises(ExportError, match="no GGUF name"):
        writer.gguf_name("lm_head.weight", 2)


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
