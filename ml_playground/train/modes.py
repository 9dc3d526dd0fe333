"""Training modes: the only things in which a run from scratch, a finetune and LoRA differ.

Every mode trains our `GPT` with the one loop (loop.py): optimizer, schedule, precision, data,
DDP/FSDP, compile, evaluation, checkpoints, exact resume and sampling are the same for all. A
mode decides:

- which GPT the run trains, with which initial weights (`build`), and so which parameters train
  (those with `requires_grad`);
- what of it a checkpoint holds (`saved_weights`, `extra_state`) and what else is written after
  each save (`after_save`) and at the end of the run (`finish`: LoRA's merged model).

| mode | selected by | the GPT | a checkpoint holds |
|---|---|---|---|
| `Mode()` | `[train.model] init_from = "scratch"` | random weights of `[train.model]` | every weight |
| `finetune.pretrained.Pretrained` | `init_from` = a source | the source's architecture and weights | every weight |
| `finetune.lora.LoRA` | `[train.peft]` | the source with LoRA layers, base frozen | the adapter |

On resume a mode builds the checkpoint's architecture; the loop then loads the saved weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ml_playground.config import GPTConfig, TrainConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.model import GPT
from ml_playground.train.checkpoint import Checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """What a mode builds its model from."""

    cfg: TrainConfig
    meta: DatasetMeta
    # ckpt_last.pt of out_dir when the run resumes (the loop restores its weights after `build`).
    checkpoint: Checkpoint | None


class Mode:
    """Train every weight of the GPT of `[train.model]` from random weights (`init_from = "scratch"`)."""

    def build(self, start: Start) -> GPT:
        """The GPT to train, on the CPU: the resumed checkpoint's architecture, else [train.model]'s."""
        cfg, checkpoint = start.cfg, start.checkpoint
        if checkpoint is not None:
            log_differences(resolve_architecture(cfg, start.meta), checkpoint.arch)
            return GPT(resumed_architecture(cfg, start.meta, checkpoint))
        if cfg.model.init_from != "scratch":
            raise ConfigError(
                f"train.model.init_from = {cfg.model.init_from!r}: pretrained weights are loaded by the "
                "finetune.pretrained.Pretrained mode (as `ml_playground train` does), not by the default mode"
            )
        return GPT(resolve_architecture(cfg, start.meta))

    def saved_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """What of the model's full state dict a checkpoint holds (and a resume loads back)."""
        return state

    def extra_state(self) -> dict[str, Any] | None:
        """Anything else a checkpoint holds (JSON-like values)."""
        return None

    def after_save(self, model: GPT, out_dir: Path, best: bool) -> None:
        """Called on rank 0 after each checkpoint is written."""

    def finish(self, model: GPT, out_dir: Path) -> None:
        """Called on rank 0 when the run ends normally (not when it stops or fails)."""


def padded_vocab_size(size: int, multiple: int) -> int:
    """`size` rounded up to a multiple of `multiple` (GPT-2's 50257 -> 50304 with 64)."""
    return -(-size // multiple) * multiple


def resolve_architecture(cfg: TrainConfig, meta: DatasetMeta) -> GPTConfig:
    """TOML [train.model] with the dataset's vocabulary.

    The dataset's ids are the tokens; embedding rows past them (padding to `vocab_multiple`, or an
    explicit larger `vocab_size`) are masked in the model."""
    model = cfg.model
    vocab_size = model.vocab_size if "vocab_size" in model.model_fields_set else meta.vocab_size
    if vocab_size < meta.vocab_size:
        raise ConfigError(
            f"train.model.vocab_size: {vocab_size} is smaller than the dataset's vocabulary ({meta.vocab_size})"
        )
    return model.architecture(
        vocab_size=padded_vocab_size(vocab_size, model.vocab_multiple), real_vocab_size=meta.vocab_size
    )


def log_differences(toml_arch: GPTConfig, saved: GPTConfig) -> None:
    differences = [
        f"{key}={value!r} (TOML {getattr(toml_arch, key)!r})"
        for key, value in saved
        if value != getattr(toml_arch, key)
    ]
    if differences:
        log.warning("the checkpoint's architecture takes precedence over TOML: %s", ", ".join(differences))


def resumed_architecture(cfg: TrainConfig, meta: DatasetMeta, checkpoint: Checkpoint) -> GPTConfig:
    """The resumed checkpoint's architecture, if the run's context and dataset fit it."""
    arch = checkpoint.arch
    if cfg.data.block_size > arch.block_size:
        raise ConfigError(
            f"train.data.block_size: {cfg.data.block_size} exceeds the checkpoint's block_size {arch.block_size}"
        )
    if arch.real_vocab_size < meta.vocab_size:
        raise CheckpointError(
            f"checkpoint vocabulary ({arch.real_vocab_size} tokens) is smaller than the dataset's ({meta.vocab_size})"
        )
    return arch
