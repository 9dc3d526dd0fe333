"""Side-by-side baseline: the user's own checkout of karpathy/nanoGPT (`--nanogpt-dir`).

Nothing of nanoGPT lives in this repository: its `model.py` is imported from the given folder,
and its training step is driven the way its train.py drives it (batches cut from a memmap that
is reopened for every batch, one row at a time; forward, backward, clip, AdamW without `fused`
on CPU, `zero_grad(set_to_none=True)`, `loss.item()` every step at log_interval=1).
Without a checkout, reports compare against the reference numbers below instead.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ml_playground.bench.shapes import ModelShape
from ml_playground.errors import ConfigError

# nanoGPT measured on a 2-core CPU; the ratios use these when no checkout is given.
REFERENCE_TRAIN_TOKENS_PER_S = 28_000.0  # case 1: ~25-28 ms/iter at 768 tokens/iter
REFERENCE_TIME_TO_QUALITY_S = 62.0  # case 3: val loss 1.8857 after 2000 iters
REFERENCE_SAMPLE_TOKENS_PER_S = 750.0  # case 4: sample.py at block_size 64, no KV cache

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True, slots=True)
class NanoGPT:
    """nanoGPT's model module, imported from a checkout."""

    module: ModuleType
    checkout: Path

    def build(self, shape: ModelShape, vocab_size: int, device: torch.device, *, dropout: float = 0.0) -> nn.Module:
        config_class = cast("Callable[..., Any]", self.module.GPTConfig)
        model_class = cast("Callable[[Any], nn.Module]", self.module.GPT)
        config = config_class(
            n_layer=shape.n_layer,
            n_head=shape.n_head,
            n_embd=shape.n_embd,
            block_size=shape.block_size,
            vocab_size=vocab_size,
            dropout=dropout,
            bias=False,
        )
        return model_class(config).to(device)

    def optimizer(self, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
        configure = cast("Callable[..., torch.optim.Optimizer]", model.configure_optimizers)
        return configure(0.1, 1e-3, (0.9, 0.99), device.type)  # train_shakespeare_char settings


def load_nanogpt(checkout: Path) -> NanoGPT:
    """Import `model.py` of a nanoGPT checkout under a private module name."""
    path = checkout / "model.py"
    if not path.is_file():
        raise ConfigError(f"--nanogpt-dir: {path} not found (expected a karpathy/nanoGPT checkout)")
    spec = importlib.util.spec_from_file_location("nanogpt_checkout_model", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--nanogpt-dir: {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for name in ("GPT", "GPTConfig"):
        if not hasattr(module, name):
            raise ConfigError(f"--nanogpt-dir: {path} defines no {name}")
    return NanoGPT(module=module, checkout=checkout)


class RowBatches:
    """nanoGPT's get_batch: reopen the memmap, random starts, one row tensor per start, stack;
    on CUDA pinned and copied without blocking."""

    def __init__(self, path: Path, dtype: np.dtype[Any], batch_size: int, block_size: int, device: torch.device):
        self.path = path
        self.dtype = dtype
        self.batch_size = batch_size
        self.block_size = block_size
        self.device = device

    def __call__(self) -> Batch:
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        starts = cast("list[int]", torch.randint(len(data) - self.block_size, (self.batch_size,)).tolist())
        T = self.block_size
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in starts])
        if self.device.type == "cuda":  # pinned and asynchronous, as train.py copies on CUDA
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


def nanogpt_lr(it: int, *, max_lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100, decay: int = 2000) -> float:
    """train.py's warmup + cosine schedule with the shakespeare_char CPU settings."""
    if it < warmup:
        return max_lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def nanogpt_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[], Batch]) -> float:
    """One train.py iteration (grad_accum 1, grad_clip 1.0, float32: no autocast, no scaler)."""
    x, y = batches()
    _, loss = cast("tuple[Tensor, Tensor]", model(x, y))
    torch.autograd.backward(loss)
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())


def nanogpt_iteration(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[], Batch], it: int, *, decay: int = 2000
) -> float:
    """Iteration `it` of train.py's loop: the scheduled learning rate, then `nanogpt_step`."""
    for group in optimizer.param_groups:
        group["lr"] = nanogpt_lr(it, decay=decay)
    return nanogpt_step(model, optimizer, batches)


def nanogpt_gpu_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    batches: Callable[[], Batch],
    *,
    grad_clip: float,
    read_loss: bool,
    bf16: bool = True,
) -> tuple[Tensor, Batch]:
    """One step as nanoGPT's GPU scripts take it (grad_accum 1): bfloat16 autocast forward, the
    next batch fetched while the device runs it, backward, clip (train.py; bench.py has none),
    fused AdamW, `zero_grad(set_to_none=True)`. `read_loss` waits for the loss as `loss.item()`
    does (bench.py every step, train.py every log_interval). Returns the loss and the next batch."""
    x, y = batch
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        _, loss = cast("tuple[Tensor, Tensor]", model(x, y))
    following = batches()
    torch.autograd.backward(loss)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if read_loss:
        loss.item()
    return loss.detach(), following


@torch.no_grad()
def nanogpt_eval(model: nn.Module, batches: Callable[[], Batch], iters: int, *, bf16: bool = False) -> float:
    """train.py's estimate_loss for one split (under its autocast context when `bf16`)."""
    model.eval()
    losses: list[float] = []
    for _ in range(iters):
        x, y = batches()
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
            losses.append(float(cast("tuple[Tensor, Tensor]", model(x, y))[1].item()))
    model.train()
    return sum(losses) / len(losses)


def nanogpt_generate(model: nn.Module, prompt: Tensor, max_new_tokens: int) -> Tensor:
    """sample.py's call: model.generate(x, max_new_tokens, temperature=0.8, top_k=200)."""
    generate = cast("Callable[..., Tensor]", model.generate)
    return generate(prompt, max_new_tokens, temperature=0.8, top_k=200)
