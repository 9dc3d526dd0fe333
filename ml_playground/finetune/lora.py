"""LoRA finetuning of our GPT as a mode of the one loop: `train.loop.train(cfg, LoRA(cfg))`.

The base comes through the importer of `init_from` (a Hugging Face GPT-2, Llama, Qwen2 or Qwen3 model,
by directory or hub id, or a checkpoint of ours or nanoGPT's); PEFT injects LoRA layers into its
linear modules (`[train.peft] target_modules`, our names), and only their weights train (with
`bias`, biases too). What differs from the loop's default mode: the optimizer sees the adapter
(what has `requires_grad`), a checkpoint holds the adapter (and, in `extra`, the base and the LoRA
settings; a resume checks that they fit), and after every save a Hugging Face base also gets the
adapter in PEFT format:

  out_dir/adapter/       best adapter (adapter_config.json, adapter_model.safetensors)
  out_dir/adapter_last/  latest adapter
  out_dir/merged/        with merge_on_save, when the run ends: ckpt_best.pt's adapter merged into
                         the base, as a native checkpoint (ckpt_best.pt with that checkpoint's
                         step, val loss and run config, which `make sample` and `make export` read
                         like any other) and, for a Hugging Face base, a Hugging Face directory
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from pydantic import TypeAdapter
from torch import Tensor, nn

from ml_playground.config import PeftConfig, TrainConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.finetune.pretrained import source_model
from ml_playground.interop.hf import export_hf
from ml_playground.interop.peft_adapter import LoraPair, write_peft_adapter
from ml_playground.interop.source import load_source
from ml_playground.model import GPT
from ml_playground.train.checkpoint import (
    ADAPTER_KIND,
    BEST_NAME,
    LAST_NAME,
    MERGED_DIR,
    SCHEMA_VERSION,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
    weights_mismatch,
)
from ml_playground.train.modes import Mode, Start

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
ADAPTER_LAST_DIR = "adapter_last"
ADAPTER_NAME = "default"  # PEFT's name of the one adapter


def inject(model: GPT, peft: PeftConfig) -> None:
    """LoRA layers (PEFT's) on `peft.target_modules` of `model`, in place; everything else frozen."""
    if "lm_head" in peft.target_modules and model.config.tie_embeddings:
        raise ConfigError(
            "train.peft.target_modules: lm_head shares its weight with the token embedding (tied), "
            "so an adapter on it cannot be merged; leave it out"
        )
    config = LoraConfig(
        r=peft.r,
        lora_alpha=peft.lora_alpha,
        lora_dropout=peft.lora_dropout,
        bias=peft.bias,
        target_modules=list(peft.target_modules),
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """The LoRA-wrapped linear layers by module name."""
    modules: list[tuple[str, nn.Module]] = list(model.named_modules())  # pyright: ignore[reportUnknownArgumentType]  # torch stub
    return {name: module for name, module in modules if isinstance(module, LoraLayer)}


def _weight(module: nn.Module) -> Tensor:
    """The weight of one of PEFT's A/B layers (nn.Linear for a linear base layer)."""
    if not isinstance(module, nn.Linear):
        raise TypeError(f"expected a LoRA Linear, found {type(module).__name__}")
    return module.weight


def lora_pairs(model: nn.Module) -> dict[str, LoraPair]:
    """Each adapted layer's (A, B)."""
    return {
        name: LoraPair(_weight(layer.lora_A[ADAPTER_NAME]), _weight(layer.lora_B[ADAPTER_NAME]))
        for name, layer in lora_layers(model).items()
    }


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """What trains (LoRA's A and B; with `bias`, biases), by parameter name: what a checkpoint holds."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_adapter_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy `adapter_state` weights of the same names and shapes into `model`."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def merged_state_dict(model: GPT, adapter: dict[str, Tensor]) -> dict[str, Tensor]:
    """`adapter` merged into a copy of `model`'s base: a plain GPT state dict (float32, on the CPU);
    `model` itself is left as it is."""
    merged = copy.deepcopy(model)
    load_adapter_state(merged, adapter)
    for name, layer in lora_layers(merged).items():
        layer.merge(adapter_names=[ADAPTER_NAME])
        parent, _, child = name.rpartition(".")
        setattr(merged.get_submodule(parent), child, layer.get_base_layer())
    return {name: t.detach().to("cpu", torch.float32) for name, t in merged.state_dict().items()}


class LoRA(Mode):
    """The `init_from` base with LoRA layers on [train.peft] target_modules; the adapter trains and
    is what a checkpoint holds (the loop compiles and wraps the GPT as in every mode)."""

    def __init__(self, cfg: TrainConfig):
        if cfg.peft is None:
            raise ConfigError("train.peft: required for LoRA finetuning")
        self.peft = cfg.peft
        self.base_name = cfg.model.init_from
        # A Hugging Face base: the adapter is also written in PEFT format, the merged model as HF.
        self.hf_base = False
        self.model: GPT | None = None  # the GPT `build` made (the run's, with its live adapter)
        self.meta: DatasetMeta | None = None  # its dataset's tokenizer, which the merged checkpoint carries

    def build(self, start: Start) -> GPT:
        source = load_source(self.base_name, "train.model.init_from")
        model = source_model(start.cfg, start.meta, source)
        inject(model, self.peft)
        self.hf_base = source.tokenizer_file is not None  # a Hugging Face directory (or hub id) brings one
        self.model, self.meta = model, start.meta
        if start.checkpoint is not None:
            check_resumable(start.checkpoint, start.cfg.runtime.out_dir / LAST_NAME, adapter_state(model))
        if self.hf_base and self.peft.bias != "none":
            log.info(
                "train.peft.bias = %r: no PEFT-format adapter is written (merge_on_save keeps the biases)",
                self.peft.bias,
            )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("LoRA on %s: %d trainable parameters", self.base_name, trainable)
        return model

    def saved_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The adapter (what trains) of the model's full state dict."""
        trained = {name for name, p in self._model().named_parameters() if p.requires_grad}
        return {name: tensor for name, tensor in state.items() if name in trained}

    def extra_state(self) -> dict[str, Any] | None:
        peft = TypeAdapter(PeftConfig).dump_python(self.peft, mode="json")
        return {"kind": ADAPTER_KIND, "base_model": self.base_name, "peft": peft}

    def after_save(self, model: GPT, out_dir: Path, best: bool) -> None:
        """A Hugging Face base: the adapter in PEFT format (trained biases have no place there)."""
        if not self.hf_base or self.peft.bias != "none":
            return
        pairs = lora_pairs(model)
        write_peft_adapter(out_dir / ADAPTER_LAST_DIR, pairs, model.config, self.peft, self.base_name)
        if best:
            write_peft_adapter(out_dir / ADAPTER_DIR, pairs, model.config, self.peft, self.base_name)

    def finish(self, model: GPT, out_dir: Path) -> None:
        """With merge_on_save: ckpt_best.pt's adapter merged into the base -> out_dir/merged/."""
        if not self.peft.merge_on_save or self.meta is None:
            return
        best_path = out_dir / BEST_NAME
        if not best_path.is_file():
            log.warning("no %s in %s (no evaluation saved one): nothing to merge", BEST_NAME, out_dir)
            return
        best = load_checkpoint(best_path)
        mismatch = weights_mismatch(best.model, adapter_state(model))
        if mismatch:
            raise CheckpointError(f"{best_path}: adapter does not fit train.peft: {mismatch}")
        folder = out_dir / MERGED_DIR
        save_merged(model, self.meta, folder, source=best, hf=self.hf_base)
        log.info("merged model -> %s", folder)

    def _model(self) -> GPT:
        if self.model is None:
            raise RuntimeError("LoRA.build has not run")
        return self.model


def save_merged(model: GPT, meta: DatasetMeta, folder: Path, *, source: Checkpoint, hf: bool) -> None:
    """The adapter of `source` (a checkpoint of this run) merged into the base: `folder/ckpt_best.pt`
    (native, for sampling and export; with the source's step, val loss and run config) and, with
    `hf`, the same model as a Hugging Face directory."""
    state_dict = merged_state_dict(model, source.model)
    checkpoint = Checkpoint(
        schema_version=SCHEMA_VERSION,
        model=state_dict,
        arch=model.config,
        iter_num=source.iter_num,
        best_val_loss=source.best_val_loss,
        config=source.config,
        dataset_meta=meta.to_dict(),
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / BEST_NAME, checkpoint)
    if hf:
        export_hf(state_dict, model.config, meta, folder)


def check_resumable(checkpoint: Checkpoint, path: Path, adapter: dict[str, Tensor]) -> None:
    """The resume checkpoint must hold an adapter of the configured LoRA settings."""
    if not checkpoint.is_adapter:
        raise CheckpointError(
            f"{path}: holds a whole model, not a LoRA adapter; give the LoRA run its own train.runtime.out_dir"
        )
    mismatch = weights_mismatch(checkpoint.model, adapter)
    if mismatch:
        raise CheckpointError(
            f"{path}: adapter does not fit train.peft ({mismatch}); resume with the settings it was "
            "written with, or use another train.runtime.out_dir"
        )
