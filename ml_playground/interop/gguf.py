"""GGUF writer (in-process, `gguf` package): our GPT -> llama.cpp's `gpt2`, `llama`, `qwen2` or
`qwen3` architecture (which one: `interop.arch.counterpart`).

The GGUF column of hf.py's key map names every tensor (`hf.key_rules`: `GPT2_KEY_MAP` for gpt2,
`LLAMA_KEY_MAP` for llama, qwen2 and qwen3, with the row blocks of our fused q|k|v and gate|up
weights and biases).
No transposes are needed: numpy shape (out, in) of our `nn.Linear` weights is ggml's {in, out},
which is what llama.cpp's graphs expect. A tied output projection is not written: llama.cpp ties
it to `token_embd.weight` when `output.weight` is absent.

RoPE: ours rotates the two halves of a head (Hugging Face's rotate_half), as llama.cpp's `qwen2`
and `qwen3` ("neox" rope) do. Its `llama` rotates adjacent pairs, so for `llama` the rows of each
query and key head are reordered from halves to pairs (`halves_to_pairs`, the reordering llama.cpp's
own converter applies to Hugging Face Llama weights; key heads counted as the KV heads). Llama 3's
frequency scaling (`rope_scaling`) is written as llama.cpp's converter writes it: a `rope_freqs`
tensor of the factor each frequency is divided by; llama.cpp reads it in `llama` only, so other
architectures with rope_scaling are refused.

Tokenizers: GPT-2 BPE is written as llama.cpp's "gpt2" model with the "gpt-2" pre-tokenizer
(tokens, merges, <|endoftext|> as BOS/EOS). A BPE trained at preparation is the same "gpt2" model
with the "llama-bpe" pre-tokenizer, whose pattern it was trained with (special tokens as control
tokens, <|endoftext|> as BOS/EOS). A char vocabulary is written as the same byte-level
BPE where each character is one token: single-byte characters need no merge, two-byte characters
get one merge of their two bytes (characters of three or more UTF-8 bytes are not supported).
The vocabulary is the tokenizer's: embedding rows padded past it are not written (`hf.tokens_only`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import gguf
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from ml_playground.atomic import atomic_output_path
from ml_playground.config import GPTConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import ExportError
from ml_playground.interop.arch import Counterpart, counterpart
from ml_playground.interop.hf import GPT2_EOT_ID, key_rules, refuse_unnamed, rows_of, tensor_for, tokens_only
from ml_playground.model import rope_frequencies
from ml_playground.tokenizers import (
    LLAMA_CPP_BPE_PRE,
    HuggingFaceTokenizer,
    byte_to_unicode,
    gpt2_vocab_and_merges,
    new_bpe_tokenizer,
    tokenizer_from_meta,
)

FloatType = Literal["f32", "f16"]


def halves_to_pairs(weight: Tensor, heads: int) -> Tensor:
    """Reorder each head's rows from [x_0..x_{d/2-1}, y_0..y_{d/2-1}] (rotated as halves) to
    [x_0, y_0, x_1, y_1, ...] (rotated as adjacent pairs), so llama.cpp's `llama` rope computes
    what ours does."""
    rows, width = weight.shape
    # (heads*hs, C) -> (heads, 2, hs/2, C) -> (heads, hs/2, 2, C) -> (heads*hs, C)
    return weight.reshape(heads, 2, rows // heads // 2, width).transpose(1, 2).reshape(rows, width)


def named_tensors(state_dict: dict[str, Tensor], config: GPTConfig, arch: Counterpart) -> list[tuple[str, Tensor]]:
    """(GGUF name, tensor) in key-map order: row blocks of fused tensors (the query/key rows
    reordered for `llama`'s pair rope), zero biases where a `bias = false` model has none
    (llama.cpp's gpt2 requires every bias)."""
    rules = key_rules(config)
    out: list[tuple[str, Tensor]] = []
    for rule in rules:
        block = rows_of(tensor_for(rule, state_dict, config), rule.rows, config)
        if arch == "llama" and rule.rows in ("q", "k"):
            block = halves_to_pairs(block, config.n_head if rule.rows == "q" else config.n_kv_head)
        out.append((rule.gguf, block))
    refuse_unnamed(state_dict, rules, config, "GGUF")
    if config.rope_scaling is not None:
        if arch != "llama":
            raise ExportError(
                f"GGUF: llama.cpp's {arch} has no Llama 3 rope scaling; train.model.rope_scaling needs the llama "
                "architecture (no qkv_bias, no per-head q/k norms)"
            )
        plain = rope_frequencies(config.replace(rope_scaling=None))
        out.append(("rope_freqs.weight", plain / rope_frequencies(config)))  # llama.cpp divides by these
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class GGUFVocab:
    """What llama.cpp's BPE tokenizer needs."""

    tokens: list[str]
    token_types: list[gguf.TokenType]
    merges: list[str]
    eos_id: int | None
    pre: str = "gpt-2"  # llama.cpp's pre-tokenizer (split pattern) name


def byte_level(text: str) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def char_vocab(itos: list[str]) -> GGUFVocab:
    merges: list[str] = []
    for char in itos:
        encoded = char.encode("utf-8")
        if len(encoded) > 2:
            raise ExportError(
                f"char vocabulary: {char!r} takes {len(encoded)} UTF-8 bytes; GGUF export supports up to 2"
            )
        if len(encoded) == 2:
            table = byte_to_unicode()
            merges.append(f"{table[encoded[0]]} {table[encoded[1]]}")
    if not merges:
        # llama.cpp refuses a BPE vocabulary without merges; byte 0xFF never occurs in UTF-8 text,
        # so this merge can never apply.
        table = byte_to_unicode()
        merges.append(f"{table[0xFF]} {table[0xFF]}")
    tokens = [byte_level(char) for char in itos]
    return GGUFVocab(tokens=tokens, token_types=[gguf.TokenType.NORMAL] * len(tokens), merges=merges, eos_id=None)


def gpt2_vocab() -> GGUFVocab:
    vocab, merges = gpt2_vocab_and_merges()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    types[GPT2_EOT_ID] = gguf.TokenType.CONTROL
    return GGUFVocab(tokens=tokens, token_types=types, merges=[f"{a} {b}" for a, b in merges], eos_id=GPT2_EOT_ID)


def trained_bpe_vocab(meta: DatasetMeta) -> GGUFVocab:
    """A BPE trained by `train_bpe`: its tokens, merges and special tokens, split by llama.cpp's
    "llama-bpe" pre-tokenizer (the same pattern). Another tokenizer.json (a pretrained model's,
    whose split llama.cpp knows under a name of its own) is refused."""
    tokenizer = tokenizer_from_meta(meta)
    assert isinstance(tokenizer, HuggingFaceTokenizer)  # the kinds with a tokenizer.json
    data = json.loads(tokenizer.backend.to_str())
    reference = json.loads(new_bpe_tokenizer().to_str())
    model = data.get("model", {})
    if model.get("type") != "BPE" or data.get("pre_tokenizer") != reference["pre_tokenizer"]:
        raise ExportError(
            f"dataset metadata: a {meta.kind} tokenizer.json other than a trained byte-level BPE cannot be "
            "exported to GGUF; export to Hugging Face and convert that with llama.cpp's convert_hf_to_gguf.py"
        )
    backend = tokenizer.backend
    tokens = [str(backend.id_to_token(i)) for i in range(tokenizer.vocab_size)]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for token_id, added in backend.get_added_tokens_decoder().items():
        types[token_id] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    # tokenizer.json writes each merge as a pair ["a", "b"] (older files: "a b").
    pairs = cast("list[list[str] | str]", model.get("merges", []))
    merges = [pair if isinstance(pair, str) else " ".join(pair) for pair in pairs]
    return GGUFVocab(tokens=tokens, token_types=types, merges=merges, eos_id=tokenizer.eot_token, pre=LLAMA_CPP_BPE_PRE)


def vocab_for(meta: DatasetMeta) -> GGUFVocab:
    if meta.tokenizer_json is not None:
        return trained_bpe_vocab(meta)
    if meta.kind == "char":
        if meta.itos is None:
            raise ExportError("dataset metadata: kind 'char' has no 'itos'")
        return char_vocab(meta.itos)
    if meta.encoding == "gpt2":
        return gpt2_vocab()
    raise ExportError(f"dataset metadata: encoding {meta.encoding!r} cannot be exported to GGUF (only 'gpt2')")


def gguf_tensors(
    state_dict: dict[str, Tensor], config: GPTConfig, ftype: FloatType
) -> list[tuple[str, npt.NDArray[np.float32] | npt.NDArray[np.float16]]]:
    """(name, array) in file order. 2-D weights take `ftype`; norms and biases stay float32."""
    out: list[tuple[str, npt.NDArray[np.float32] | npt.NDArray[np.float16]]] = []
    for name, tensor in named_tensors(state_dict, config, counterpart(config)):
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        out.append((name, array.astype(np.float16) if ftype == "f16" and array.ndim == 2 else array))
    return out


def add_architecture(writer: gguf.GGUFWriter, config: GPTConfig, arch: Counterpart) -> None:
    """The hyperparameters llama.cpp reads for `arch` (under `<arch>.` keys)."""
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.mlp_hidden)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    if arch == "gpt2":
        writer.add_layer_norm_eps(config.norm_eps)
        return
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)


def write_gguf(
    path: Path,
    state_dict: dict[str, Tensor],
    config: GPTConfig,
    meta: DatasetMeta,
    *,
    ftype: FloatType,
    name: str,
) -> None:
    """Write a llama.cpp-loadable GGUF file atomically; its vocabulary is the tokenizer's
    (padding rows dropped). An architecture without a counterpart is refused before writing."""
    arch = counterpart(config)
    state_dict, config = tokens_only(state_dict, config, meta)
    vocab = vocab_for(meta)
    if len(vocab.tokens) != config.vocab_size:
        raise ExportError(f"tokenizer has {len(vocab.tokens)} tokens but its metadata says {meta.vocab_size}")
    tensors = gguf_tensors(state_dict, config, ftype)
    with atomic_output_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if ftype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        add_architecture(writer, config, arch)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.token_types)
        writer.add_token_merges(vocab.merges)
        if vocab.eos_id is not None:
            writer.add_bos_token_id(vocab.eos_id)
            writer.add_eos_token_id(vocab.eos_id)
        writer.add_add_bos_token(False)
        for tensor_name, array in tensors:
            writer.add_tensor(tensor_name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
