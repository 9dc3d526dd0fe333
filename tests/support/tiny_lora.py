"""A tiny LoRA finetune: a char GPT exported to Hugging Face as the base, a dataset in its
vocabulary, and the [train] table (as parsed TOML) of a LoRA run on them."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml_playground.config import TrainConfig
from ml_playground.data.meta import DatasetMeta, read_meta, write_meta
from ml_playground.finetune.lora import LoRA
from ml_playground.interop.hf import export_hf
from ml_playground.model import GPT
from ml_playground.tokenizers import CharTokenizer
from ml_playground.train.loop import TrainResult, train
from ml_playground.train.modes import Start

# Every linear layer of a Hugging Face Llama / Qwen3 block.
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@contextlib.contextmanager
def peft_compat() -> Generator[None]:
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it wraps a
    transformers model; that FutureWarning is theirs to fix, so it is ignored around those calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def adapted_hf(base_dir: Path, adapter_dir: Path) -> Any:
    """The Hugging Face base with a PEFT-format adapter (PeftModel.from_pretrained), in eval mode."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with peft_compat():
        adapted: Any = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir))
    return adapted.eval()


@contextlib.contextmanager
def torch_threads(n: int) -> Generator[None]:
    """Temporarily set torch's intra-op thread count (the CPU is shared; spinning thread pools slow
    tiny models down)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_base(model: GPT, meta: DatasetMeta, folder: Path) -> Path:
    """`model` as a Hugging Face directory (GPT2LMHeadModel, LlamaForCausalLM, ...): the base a LoRA run loads."""
    export_hf(model.state_dict(), model.config, meta, folder)
    return folder


def write_finetune_dataset(
    folder: Path, tokenizer: CharTokenizer, meta: DatasetMeta, text: str, *, train_tokens: int | None = None
) -> Path:
    """train.bin / val.bin / meta.json of `text` in the base's vocabulary; the first
    `train_tokens` ids train (80% when None), the rest validate."""
    ids = np.array(tokenizer.encode(text), dtype="<u2")
    cut = int(len(ids) * 0.8) if train_tokens is None else train_tokens
    folder.mkdir(parents=True, exist_ok=True)
    ids[:cut].tofile(folder / "train.bin")
    ids[cut:].tofile(folder / "val.bin")
    write_meta(folder / "meta.json", meta)
    return folder


def lora_train_table(dataset_dir: Path, base_dir: Path, out_dir: Path, *, max_iters: int) -> dict[str, Any]:
    """A [train] table for LoRA (r 4) on the base (`init_from`), evaluated every 10 steps; tests override keys."""
    return {
        "data": {"dataset_dir": str(dataset_dir), "batch_size": 4, "block_size": 16, "grad_accum_steps": 1},
        "optim": {"learning_rate": 1e-2, "grad_clip": 1.0},
        "schedule": {"warmup_iters": 2, "lr_decay_iters": max_iters, "min_lr": 1e-3},
        "runtime": {
            "out_dir": str(out_dir),
            "max_iters": max_iters,
            "eval_interval": 10,
            "eval_iters": 2,
            "log_interval": 1,
            "seed": 7,
            "peak_flops": 1e12,
        },
        "model": {"init_from": str(base_dir)},
        "peft": {"r": 4, "lora_alpha": 8},
    }


def finetune(cfg: TrainConfig) -> TrainResult:
    """What `make train` runs for a LoRA config: the loop with the LoRA mode."""
    return train(cfg, LoRA(cfg))


def fresh_lora(cfg: TrainConfig) -> tuple[LoRA, GPT]:
    """The mode and GPT (a fresh adapter on the base) a LoRA run of `cfg` builds, outside any run."""
    mode = LoRA(cfg)
    return mode, mode.build(Start(cfg=cfg, meta=read_meta(cfg.data.meta_path), checkpoint=None))
