"""Checkpoint I/O: a versioned schema, atomic writes, `weights_only` loads, legacy migration.

A checkpoint is a plain dict of tensors and JSON-like values (so `torch.load(weights_only=True)`
can read it without running code). `Checkpoint` is its typed view. This is the one place that
strips `torch.compile`'s `_orig_mod.` prefixes and the one place that migrates older layouts:
nanoGPT's `ckpt.pt` (keys model, model_args, iter_num, best_val_loss, config) and our files from
before the architecture was stored whole (`model_args` alone).
"""

from __future__ import annotations

import codecs
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from pydantic import ValidationError
from torch import Tensor

from ml_playground.atomic import atomic_binary_writer, link_or_copy_atomic
from ml_playground.config import GPTConfig
from ml_playground.config_loader import format_validation_error
from ml_playground.data.meta import DatasetMeta, read_meta
from ml_playground.errors import CheckpointError, os_reason

SCHEMA_VERSION = 1
# Legacy nanoGPT checkpoints are migrated to this schema version on load.
LEGACY_SCHEMA_VERSION = 0

BEST_NAME = "ckpt_best.pt"
LAST_NAME = "ckpt_last.pt"
LEGACY_NAME = "ckpt.pt"
# Discovery order for sampling/export.
DISCOVERY_ORDER = (BEST_NAME, LAST_NAME, LEGACY_NAME)

# `extra["kind"]` of a checkpoint that holds a LoRA adapter's weights alone (resumable, not a model);
# its run writes the merged whole model to MERGED_DIR beside it.
ADAPTER_KIND = "lora"
MERGED_DIR = "merged"

# nanoGPT's GPTConfig keys: a checkpoint's `model_args` holds them (and the options that are not
# GPT-2's), so that nanoGPT's train.py and sample.py load a GPT-2-shaped checkpoint of ours.
MODEL_ARG_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
# GPTConfig keys that `model_args` leaves out: the width rule's multiple (mlp_hidden holds the
# width) and the tokenizer's ids (`dataset_meta` holds them).
_NOT_MODEL_ARGS = ("mlp_multiple", "real_vocab_size")
_COMPILE_PREFIX = "_orig_mod."
# nanoGPT's GPT-2 BPE fallback vocabulary size (when no meta.pkl describes the dataset).
_GPT2_VOCAB_SIZE = 50257


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """Everything exact resume, sampling and export need. Optional parts are None when absent
    (a migrated legacy nanoGPT checkpoint has no RNG, data position or scaler)."""

    schema_version: int
    model: dict[str, Tensor]
    # The architecture; the file holds it whole (`gpt_config`) and as nanoGPT's `model_args` view
    # (see model_args_of).
    arch: GPTConfig
    iter_num: int
    best_val_loss: float  # the best metric is the val loss; `evaluation` adds bits per byte
    config: dict[str, Any]
    # The evaluation this checkpoint was saved at: {"train", "val"} losses and, where the tokenizer
    # is known, {"train_bpb", "val_bpb"}.
    evaluation: dict[str, float] | None = None
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    data_state: dict[str, Any] | None = None
    # DatasetMeta.to_dict(): the tokenizer travels with the weights.
    dataset_meta: dict[str, Any] | None = None
    # Extra state of the training target (e.g. a LoRA adapter's settings); JSON-like values.
    extra: dict[str, Any] | None = None
    # Multi-process runs: every rank's {"rng", "data_state"} in rank order (rng/data_state above
    # are rank 0's), so a resume with the same world size is exact on every rank.
    rank_states: list[dict[str, Any]] | None = None

    @property
    def is_legacy(self) -> bool:
        return self.schema_version == LEGACY_SCHEMA_VERSION

    @property
    def is_adapter(self) -> bool:
        return self.extra is not None and self.extra.get("kind") == ADAPTER_KIND

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "gpt_config": self.arch.model_dump(),
            "model_args": model_args_of(self.arch),
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "evaluation": self.evaluation,
            "config": self.config,
            "rng": self.rng,
            "data_state": self.data_state,
            "dataset_meta": self.dataset_meta,
            "extra": self.extra,
            "rank_states": self.rank_states,
        }


def model_args_of(config: GPTConfig) -> dict[str, Any]:
    """nanoGPT's `model_args` dict for an architecture, plus each option that is not GPT-2's: a
    GPT-2 checkpoint stays loadable by nanoGPT (`GPTConfig(**model_args)`), and nanoGPT refuses
    any other architecture instead of running it as GPT-2."""
    args = {key: getattr(config, key) for key in MODEL_ARG_KEYS}
    gpt2 = GPTConfig(**args).model_dump()  # GPT-2's block in the same sizes
    skipped = MODEL_ARG_KEYS + _NOT_MODEL_ARGS
    # Plain values (a nested option such as rope_scaling as a dict): the file loads without our classes.
    return args | {
        key: value for key, value in config.model_dump().items() if key not in skipped and value != gpt2[key]
    }


def strip_compile_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove torch.compile's `_orig_mod.` prefixes (the only place that does this)."""
    return {key.removeprefix(_COMPILE_PREFIX): value for key, value in state_dict.items()}


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: a crash at any moment leaves the previous file intact. A refused write (a
    full disk, where torch itself reports a RuntimeError) is one line; its temporary file is removed."""
    try:
        with atomic_binary_writer(path) as handle:
            torch.save(checkpoint.to_dict(), handle)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({os_reason(exc)})") from None


def copy_checkpoint(source: Path, path: Path) -> None:
    """`path` becomes `source` (ckpt_best.pt from the ckpt_last.pt just written), atomically."""
    try:
        link_or_copy_atomic(source, path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({exc.strerror or exc})") from None


def find_checkpoint(out_dir: Path) -> Path:
    """ckpt_best.pt, then ckpt_last.pt, then nanoGPT's ckpt.pt; an error when none exists."""
    for name in DISCOVERY_ORDER:
        candidate = out_dir / name
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{out_dir}: no checkpoint found (looked for {', '.join(DISCOVERY_ORDER)})")


def load_model_checkpoint(path: Path) -> tuple[Checkpoint, DatasetMeta]:
    """A checkpoint for sampling and export (`path` from find_checkpoint): a whole model with its tokenizer."""
    checkpoint = load_checkpoint(path)
    if checkpoint.is_adapter:
        raise CheckpointError(
            f"{path}: holds a LoRA adapter, not a whole model; sample or export its merged model in "
            f"{path.parent / MERGED_DIR} (written when train.peft.merge_on_save is true)"
        )
    if checkpoint.dataset_meta is None:
        raise CheckpointError(f"{path}: checkpoint key 'dataset_meta' is missing; cannot decode tokens")
    return checkpoint, DatasetMeta.from_dict(checkpoint.dataset_meta, where=f"{path}: dataset_meta")


# What a file torch.save wrote starts with: a zip archive (torch >= 1.6) or a pickle (older).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
_LFS_POINTER = b"version https://git-lfs"


def _read_raw(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
        if not head.startswith(_TORCH_MAGIC):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_what_it_is(head)})")
        raw: object = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:  # not a corrupt file: no advice to delete it
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror}); it was left as it is") from None
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False, which would run code from the file: never.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: it holds Python objects{what} that a safe load (tensors and plain values "
            "only, weights_only) does not run; it was not written by ml-playground or nanoGPT"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path}: checkpoint is truncated or corrupted ({type(exc).__name__}); delete it or restore a good copy"
        ) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a checkpoint (top level is {type(raw).__name__}, expected a dict)")
    return {str(key): value for key, value in cast("dict[object, Any]", raw).items()}


def _what_it_is(head: bytes) -> str:
    if head.startswith(_LFS_POINTER):
        return "a Git LFS pointer: fetch the file itself, e.g. `git lfs pull`"
    if not head:
        return "an empty file"
    try:
        # Incremental: a character cut in two at the end of the bytes read is still text.
        codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return "an unknown binary format"
    return "a text file"


def _field(path: Path, raw: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in raw:
        raise CheckpointError(f"{path}: checkpoint key '{key}' is missing")
    value = raw[key]
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: checkpoint key '{key}' has type {type(value).__name__}")
    return value


def _optional(path: Path, raw: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: checkpoint key '{key}' has type {type(value).__name__}")
    return value  # pyright: ignore[reportUnknownVariableType]


def _rank_states(path: Path, raw: dict[str, Any]) -> list[dict[str, Any]] | None:
    value = raw.get("rank_states")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):  # pyright: ignore[reportUnknownVariableType]
        raise CheckpointError(f"{path}: checkpoint key 'rank_states' is not a list of per-rank dicts")
    return cast("list[dict[str, Any]]", value)


def _state_dict(path: Path, raw: dict[str, Any]) -> dict[str, Tensor]:
    model = _field(path, raw, "model", dict)
    if not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in model.items()):
        raise CheckpointError(f"{path}: checkpoint key 'model' is not a state dict of tensors")
    return strip_compile_prefix(model)


def _arch(path: Path, raw: dict[str, Any], dataset_meta: dict[str, Any] | None) -> GPTConfig:
    """The architecture of a checkpoint in any layout (the one place that migrates them): `gpt_config`
    whole; else `model_args` alone (earlier versions, nanoGPT's 7 keys), where an absent or None
    n_kv_head or mlp_hidden meant n_head or 4 x n_embd (whatever the MLP) and the tokens are the
    dataset metadata's vocabulary when it fits the rows (else every row)."""
    if "gpt_config" in raw:
        return _validated(path, "gpt_config", _field(path, raw, "gpt_config", dict), strict=True)
    args: dict[str, Any] = _field(path, raw, "model_args", dict)
    missing = [key for key in MODEL_ARG_KEYS if key not in args]
    if missing:
        raise CheckpointError(f"{path}: model_args: missing keys {', '.join(missing)}")
    fields = {key: value for key, value in args.items() if value is not None}
    n_embd, vocab_size = fields.get("n_embd"), fields.get("vocab_size")
    if "mlp_hidden" not in fields and isinstance(n_embd, int):
        fields["mlp_hidden"] = 4 * n_embd
    tokens = None if dataset_meta is None else dataset_meta.get("vocab_size")
    # A tokenizer larger than the model is left to the readers' checks (sampling and export name it).
    if type(tokens) is int and isinstance(vocab_size, int) and 0 < tokens <= vocab_size:  # not a bool
        fields["real_vocab_size"] = tokens
    return _validated(path, "model_args", fields, strict=False)  # numbers as older writers stored them


def _validated(path: Path, key: str, fields: dict[str, Any], *, strict: bool) -> GPTConfig:
    try:
        return GPTConfig.model_validate(fields, strict=strict)
    except ValidationError as exc:
        raise CheckpointError(format_validation_error(f"{path}: {key}", exc)) from None


def _legacy_dataset_meta(path: Path, vocab_size: int) -> dict[str, Any]:
    """nanoGPT's tokenizer rule: a meta.pkl beside the checkpoint, else GPT-2 BPE."""
    meta_pkl = path.parent / "meta.pkl"
    if meta_pkl.is_file():
        return read_meta(meta_pkl).to_dict()
    if vocab_size < _GPT2_VOCAB_SIZE:
        raise CheckpointError(
            f"{path}: legacy checkpoint with vocab_size {vocab_size} needs its meta.pkl beside it (expected {meta_pkl})"
        )
    return {
        "version": 1,
        "kind": "tiktoken",
        "vocab_size": _GPT2_VOCAB_SIZE,
        "dtype": "uint16",
        "encoding": "gpt2",
        "itos": None,
        "train_tokens": 0,
        "val_tokens": 0,
        "source_sha256": None,
    }


def _drop_mask_buffers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """nanoGPT on torch < 2.0 saved its causal mask as a buffer `...attn.bias`; we use SDPA's."""
    return {key: value for key, value in state_dict.items() if not key.endswith((".attn.bias", ".attn.masked_bias"))}


def _migrate_legacy(path: Path, raw: dict[str, Any]) -> Checkpoint:
    dataset_meta = _legacy_dataset_meta(path, _arch(path, raw, None).vocab_size)
    config = raw.get("config")
    best = raw.get("best_val_loss", math.inf)
    return Checkpoint(
        schema_version=LEGACY_SCHEMA_VERSION,
        model=_drop_mask_buffers(_state_dict(path, raw)),
        arch=_arch(path, raw, dataset_meta),
        iter_num=int(raw.get("iter_num", 0)),
        best_val_loss=float(best.item() if isinstance(best, Tensor) else best),
        config=dict(config) if isinstance(config, dict) else {},  # pyright: ignore[reportUnknownArgumentType]
        optimizer=_optional(path, raw, "optimizer"),
        dataset_meta=dataset_meta,
    )


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint (ours, or nanoGPT's migrated); errors name the file."""
    raw = _read_raw(path)
    if "schema_version" not in raw:
        return _migrate_legacy(path, raw)
    version = raw["schema_version"]
    if version != SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
        )
    dataset_meta = _optional(path, raw, "dataset_meta")
    return Checkpoint(
        schema_version=SCHEMA_VERSION,
        model=_state_dict(path, raw),
        arch=_arch(path, raw, dataset_meta),
        iter_num=int(_field(path, raw, "iter_num", int)),
        best_val_loss=float(_field(path, raw, "best_val_loss", (int, float))),
        evaluation=_optional(path, raw, "evaluation"),
        config=_field(path, raw, "config", dict),
        optimizer=_optional(path, raw, "optimizer"),
        scaler=_optional(path, raw, "scaler"),
        rng=_optional(path, raw, "rng"),
        data_state=_optional(path, raw, "data_state"),
        dataset_meta=dataset_meta,
        extra=_optional(path, raw, "extra"),
        rank_states=_rank_states(path, raw),
    )


def weights_mismatch(saved: dict[str, Tensor], expected: dict[str, Tensor]) -> str:
    """How saved weights differ from the model's in names and shapes ("" when they fit)."""
    problems: list[str] = []
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    shapes = [
        f"{name} {tuple(saved[name].shape)} vs {tuple(expected[name].shape)} here"
        for name in expected
        if name in saved and saved[name].shape != expected[name].shape
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape(s) differ, e.g. {shapes[0]}")
    return "; ".join(problems)
