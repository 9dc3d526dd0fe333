"""Side-by-side baseline: the user's own checkout of karpathy/nanoGPT (`--nanogpt-dir`), its
`model.py` imported from there and trained as its train.py (or bench.py) trains it. Without a
checkout, reports compare against the reference numbers below."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ml_playground.bench.report import EvalPoint, TimedRun
from ml_playground.bench.timing import StepClock
from ml_playground.config import GPTConfig, TrainConfig
from ml_playground.data.meta import read_meta
from ml_playground.errors import ConfigError
from ml_playground.train.schedule import learning_rate

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

    def build(self, model: GPTConfig, vocab_size: int, device: torch.device) -> nn.Module:
        """nanoGPT's GPT in `model`'s shape and dropout, without bias."""
        shape = {key: getattr(model, key) for key in ("n_layer", "n_head", "n_embd", "block_size", "dropout")}
        config = cast("Callable[..., Any]", self.module.GPTConfig)(**shape, vocab_size=vocab_size, bias=False)
        return cast("Callable[[Any], nn.Module]", self.module.GPT)(config).to(device)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainPy:
    """nanoGPT's side of a run as its train.py takes `cfg`: its shape, dropout, batch, clip, precision
    (bf16 autocast), compile, seed, schedule, iterations and evaluations. bench.py's step is train.py's
    with no clip (grad_clip 0) and a constant learning rate (decay_lr false)."""

    cfg: TrainConfig
    vocab_size: int
    read_every: int = 1  # loss.item() every log_interval steps

    def batches(self, path: Path, device: torch.device) -> Callable[[], Batch]:
        """nanoGPT's get_batch on `path`: reopen the memmap, random starts, one row tensor per start,
        stack; on CUDA pinned and copied without blocking."""
        dtype, T, B = read_meta(self.cfg.data.meta_path).numpy_dtype, self.cfg.data.block_size, self.cfg.data.batch_size

        def get_batch() -> Batch:
            rows = np.memmap(path, dtype=dtype, mode="r")
            starts = cast("list[int]", torch.randint(len(rows) - T, (B,)).tolist())
            x = torch.stack([torch.from_numpy(rows[i : i + T].astype(np.int64)) for i in starts])
            y = torch.stack([torch.from_numpy(rows[i + 1 : i + 1 + T].astype(np.int64)) for i in starts])
            if device.type == "cuda":  # pinned and asynchronous, as train.py copies on CUDA
                return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            return x.to(device), y.to(device)

        return get_batch


def set_up(nanogpt: NanoGPT, spec: TrainPy, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """nanoGPT's model and AdamW (train_shakespeare_char's settings) from `spec`'s seed, compiled
    from scratch as a fresh process would."""
    torch.compiler.reset()
    torch.manual_seed(spec.cfg.runtime.seed)
    model = nanogpt.build(spec.cfg.model, spec.vocab_size, device)
    configure = cast("Callable[..., torch.optim.Optimizer]", model.configure_optimizers)
    optimizer = configure(0.1, 1e-3, (0.9, 0.99), device.type)
    if spec.cfg.runtime.compile:
        model.compile()
    return model, optimizer


def train_py_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    batches: Callable[[], Batch],
    it: int,
    spec: TrainPy,
) -> tuple[Tensor, Batch]:
    """Iteration `it` as train.py takes it (grad_accum 1): the scheduled learning rate, the forward
    (under bf16 autocast when the run is bfloat16), the next batch fetched while the device runs it, backward,
    clip, AdamW, `zero_grad(set_to_none=True)`, `loss.item()` every `read_every` steps.
    Returns the loss and the next batch."""
    cfg = spec.cfg
    if cfg.schedule.decay_lr:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, cfg.optim.learning_rate, cfg.schedule)
    x, y = batch
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=cfg.runtime.dtype == "bfloat16"):
        _, loss = cast("tuple[Tensor, Tensor]", model(x, y))
    following = batches()
    torch.autograd.backward(loss)
    if cfg.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if it % spec.read_every == 0:
        loss.item()
    return loss.detach(), following


def train_py_steps(
    nanogpt: NanoGPT, spec: TrainPy, device: torch.device, *, warmup: int, reps: int, every: int = 1
) -> tuple[tuple[float, ...], float]:
    """`train_py_step` stamped as ours are (`StepClock`): the seconds per step of each window after
    `warmup` steps, and the last loss."""
    clock = StepClock(device, every=every)
    warmup, steps = clock.plan(warmup, reps)
    model, optimizer = set_up(nanogpt, spec, device)
    batches = spec.batches(spec.cfg.data.train_path, device)
    batch, loss = batches(), torch.full((), math.nan)
    for it in range(steps):
        loss, batch = train_py_step(model, optimizer, batch, batches, it, spec)
        clock.stamp()
    return clock.steps(warmup), float(loss)


@torch.no_grad()
def nanogpt_eval(model: nn.Module, batches: Callable[[], Batch], iters: int, *, bf16: bool) -> float:
    """train.py's estimate_loss for one split (under its autocast context when `bf16`)."""
    model.eval()
    losses: list[float] = []
    for _ in range(iters):
        x, y = batches()
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
            losses.append(float(cast("tuple[Tensor, Tensor]", model(x, y))[1].item()))
    model.train()
    return sum(losses) / len(losses)


def train_py_run(nanogpt: NanoGPT, spec: TrainPy, device: torch.device, checkpoint: Path) -> TimedRun:
    """train.py's whole run of `max_iters`, compilation included: both splits evaluated every
    `eval_interval` iterations including 0 and the last, a checkpoint (model + optimizer,
    torch.save) whenever val improves after iteration 0, `train_py_step` between."""
    started = time.time()
    model, optimizer = set_up(nanogpt, spec, device)
    data, runtime, bf16 = spec.cfg.data, spec.cfg.runtime, spec.cfg.runtime.dtype == "bfloat16"
    train, val = spec.batches(data.train_path, device), spec.batches(data.val_path, device)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    curve: list[EvalPoint] = []
    batch = train()
    for it in range(runtime.max_iters + 1):
        if it % runtime.eval_interval == 0 or it == runtime.max_iters:
            nanogpt_eval(model, train, runtime.eval_iters, bf16=bf16)
            val_loss = nanogpt_eval(model, val, runtime.eval_iters, bf16=bf16)
            if it > 0 and val_loss < min(point.val_loss for point in curve):
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
            curve.append(EvalPoint(seconds=time.time() - started, iter=it, val_loss=val_loss))
        if it < runtime.max_iters:
            _, batch = train_py_step(model, optimizer, batch, train, it, spec)
    return TimedRun(total_seconds=time.time() - started, curve=tuple(curve))


def nanogpt_generate(model: nn.Module, prompt: Tensor, max_new_tokens: int) -> Tensor:
    """sample.py's call: model.generate(x, max_new_tokens, temperature=0.8, top_k=200)."""
    generate = cast("Callable[..., Tensor]", model.generate)
    return generate(prompt, max_new_tokens, temperature=0.8, top_k=200)
