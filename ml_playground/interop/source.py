"""Pretrained sources (`init_from`): a Hugging Face model id, a local Hugging Face directory (GPT-2,
Llama, Qwen2, Qwen3) or a checkpoint file, read into our format with the source's tokenizer.

A model id is downloaded only here, when a config names one: `hub_download` fetches the config,
safetensors weights and tokenizer files (nothing else) through huggingface_hub's cache, and
refuses with one line when the hub cannot be reached. A local path always wins over a model id of
the same name. Training (`train/modes.py`) finetunes every weight of a source; sampling
(`sample_source`) draws from it as it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ml_playground.config import GPTConfig, ModelConfig, SampleConfig, TrainConfig, project_path
from ml_playground.data.meta import DatasetMeta, identity_difference
from ml_playground.errors import CheckpointError, ConfigError, DataError, ExportError, summary
from ml_playground.interop.arch import option_value, toml_text
from ml_playground.interop.hf import (
    TOKENIZER_FILE,
    SafetensorsWeights,
    from_hf_state_dict,
    hf_architecture,
    meta_from_tokenizer_json,
)
from ml_playground.model import GPT
from ml_playground.runtime import Runtime
from ml_playground.sample import run_sampling
from ml_playground.tokenizers import HuggingFaceTokenizer, Tokenizer, meta_of, tokenizer_from_meta
from ml_playground.train.checkpoint import load_model_checkpoint

log = logging.getLogger(__name__)

# What a model id downloads: the architecture, the weights and the tokenizer (no PyTorch pickles,
# no other formats).
HUB_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
# "gpt2", "openai-community/gpt2", "TinyLlama/TinyLlama-1.1B-Chat-v1.0": one optional owner part.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# The [train.model] keys a source fixes: its whole architecture but dropout, which may be overridden
# (as in nanoGPT), vocab_size, which counts tokens there (checked against the source's tokens),
# mlp_multiple (checked against the source's MLP width) and real_vocab_size (not a key).
SOURCE_KEYS = tuple(
    key for key in GPTConfig.model_fields if key not in ("dropout", "vocab_size", "mlp_multiple", "real_vocab_size")
)

# A model id -> the local folder holding its files.
Downloader = Callable[[str], Path]


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """A pretrained model: its architecture, tokenizer and a way to put its weights into a GPT.

    `meta` is the tokenizer as a dataset holds it: char or GPT-2 BPE when the source's is one of
    those, else its tokenizer.json (kind "huggingface"); `tokenizer_file` is a Hugging Face
    directory's tokenizer.json. `weights` are our (nanoGPT-named) tensors of a checkpoint, or a
    Hugging Face directory's files, read one tensor at a time into the model's own parameters
    (`load_into`): a source in bfloat16 never stands beside a float32 copy of itself."""

    name: str  # init_from as written
    weights: dict[str, Tensor] | SafetensorsWeights
    config: GPTConfig
    meta: DatasetMeta
    tokenizer_file: Path | None = None

    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_meta(self.meta, where=f"init_from {self.name!r}")

    def load_into(self, model: GPT) -> None:
        """The source's weights into `model` (a GPT of `config`, dropout aside); a RuntimeError or an
        ExportError when they do not fit."""
        if isinstance(self.weights, SafetensorsWeights):
            from_hf_state_dict(self.weights, self.config, self.name, into=model.state_dict())
        else:
            model.load_state_dict(self.weights)


def hub_download(model_id: str) -> Path:
    """The model's config, safetensors and tokenizer files in huggingface_hub's cache (downloaded
    when missing; HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE apply)."""
    from huggingface_hub import snapshot_download  # pyright: ignore[reportUnknownVariableType]  # a dict[Unknown] parameter in its overloads

    log.info("init_from %r: fetching config, safetensors weights and tokenizer from the Hugging Face hub", model_id)
    try:
        return Path(snapshot_download(model_id, allow_patterns=list(HUB_FILES)))
    except (OSError, ValueError) as exc:  # offline, unreachable, unknown or gated repository
        raise ConfigError(
            f"init_from {model_id!r}: cannot download it from the Hugging Face hub "
            f"({type(exc).__name__}: {summary(exc)}); "
            "a model id needs the network (or its files in the huggingface_hub cache)"
        ) from None


def locate(init_from: str, key: str, download: Downloader) -> Path:
    """A file or directory (relative paths against the project root), else a downloaded model id."""
    path = project_path(init_from)
    if path.exists():
        return path
    if HUB_ID.fullmatch(init_from) is None:
        raise ConfigError(f"{key}: {path} not found (and {init_from!r} is not a Hugging Face model id)")
    return download(init_from)


def load_source(init_from: str, key: str, download: Downloader = hub_download) -> Source:
    """Read the source `init_from` names; `key` (the config key) names it in errors."""
    path = locate(init_from, key, download)
    try:
        if path.is_file():
            checkpoint, meta = load_model_checkpoint(path)
            return Source(name=init_from, weights=checkpoint.model, config=checkpoint.arch, meta=meta)
        return _hf_source(init_from, path)
    except (ExportError, CheckpointError, DataError) as exc:
        raise type(exc)(f"{key} = {init_from!r}: {exc}") from None


def _hf_source(name: str, path: Path) -> Source:
    weights, config = hf_architecture(path)
    tokenizer_file = path / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise ExportError(f"{tokenizer_file}: not found (the source's tokenizer)")
    try:
        meta = meta_from_tokenizer_json(tokenizer_file)
    except ExportError:  # a tokenizer of its own (Llama's, Qwen's, a trained BPE): kept as its tokenizer.json
        meta = meta_of(HuggingFaceTokenizer.from_file(tokenizer_file), tokenizer_from=name)
    tokens = meta.vocab_size
    if tokens > config.vocab_size:
        raise ExportError(f"{tokenizer_file}: {tokens} tokens, but the model has {config.vocab_size} rows")
    return Source(
        name=name,
        weights=weights,
        config=config.replace(real_vocab_size=tokens),
        meta=meta,
        tokenizer_file=tokenizer_file,
    )


def describe(meta: DatasetMeta) -> str:
    if meta.kind == "char":
        return f"a char vocabulary of {meta.vocab_size} characters"
    if meta.kind == "tiktoken":
        return f"tiktoken {meta.encoding}"
    digest = str(meta.tokenizer_sha256)[:12]
    if meta.kind == "bpe":
        return f"a BPE trained at preparation (tokenizer.json sha256 {digest})"
    return f"the Hugging Face tokenizer of {meta.tokenizer_from} (tokenizer.json sha256 {digest})"


def contradictions(model: ModelConfig, arch: GPTConfig) -> list[str]:
    """`train.model.<key> = ours (source: theirs)` for each key set in [train.model] that the source's
    architecture does not have."""
    given = model.model_fields_set
    found = [
        f"train.model.{key} = {toml_text(getattr(model, key))} (source: {option_value(arch, key)})"
        for key in SOURCE_KEYS
        if key in given and getattr(model, key) != getattr(arch, key)
    ]
    if "vocab_size" in given and model.vocab_size != arch.real_vocab_size:
        found.append(f"train.model.vocab_size = {model.vocab_size} (source: {arch.real_vocab_size} tokens)")
    # Paddings the source's sizes do not have.
    if "vocab_multiple" in given and arch.vocab_size % model.vocab_multiple != 0:
        found.append(f"train.model.vocab_multiple = {model.vocab_multiple} (source: {arch.vocab_size} rows)")
    if "mlp_multiple" in given and arch.mlp_hidden % model.mlp_multiple != 0:
        found.append(f"train.model.mlp_multiple = {model.mlp_multiple} (source: MLP width {arch.mlp_hidden})")
    return found


def finetune_architecture(cfg: TrainConfig, meta: DatasetMeta, source: Source) -> GPTConfig:
    """The source's architecture with [train.model] dropout; refuses contradicting keys, another
    tokenizer than the dataset's and a context the source does not have, each in one line."""
    name = cfg.model.init_from
    found = contradictions(cfg.model, source.config)
    if found:
        raise ConfigError(f"train.model: keys contradict init_from {name!r}: {'; '.join(found)}")
    if identity_difference(
        source.meta, meta, a_name=f"init_from {name!r}", b_name=str(cfg.data.meta_path), tokenizer_only=True
    ):
        raise DataError(
            f"train.model.init_from {name!r} uses {describe(source.meta)}, but the dataset "
            f"{cfg.data.meta_path} is {describe(meta)}; prepare the dataset with the source's tokenizer"
            + (
                f' ([prepare] tokenizer = "huggingface", tokenizer_from = {name!r})'
                if source.meta.tokenizer_json is not None
                else ""
            )
        )
    if cfg.data.block_size > source.config.block_size:
        raise ConfigError(
            f"train.data.block_size: {cfg.data.block_size} exceeds init_from {name!r}'s block_size "
            f"{source.config.block_size}"
        )
    return source.config.replace(dropout=cfg.model.dropout)


def source_for_inference(
    init_from: str, runtime: Runtime, download: Downloader = hub_download
) -> tuple[GPT, Tokenizer, str]:
    """The source as an eval-mode model on the runtime's device, with its own tokenizer."""
    source = load_source(init_from, "sample.runtime.init_from", download)
    model = GPT(source.config.replace(dropout=0.0))
    source.load_into(model)
    log.info("sampling from init_from %r (%.2fM parameters)", init_from, model.num_params() / 1e6)
    return model.to(runtime.device).eval(), source.tokenizer(), init_from


def sample_source(cfg: SampleConfig, download: Downloader = hub_download) -> list[str]:
    """`make sample` with [sample.runtime] init_from: the sampler on the source as it is."""
    init_from = cfg.runtime.init_from
    return run_sampling(cfg, load=lambda runtime: source_for_inference(init_from, runtime, download))
