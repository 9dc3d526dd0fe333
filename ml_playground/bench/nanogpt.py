"""Side-by-side baseline: the user's own checkout of karpathy/nanoGPT (`--nanogpt-dir`).

Nothing of nanoGPT lives in this repository: its `model.py` is imported from the given folder, and
its training driven the way its train.py (or bench.py) drives it: `train_py_step` for one
iteration, `train_py_run` for a whole run with its evaluations and checkpoints. Without a
checkout, reports compare against the reference numbers below instead.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ml_playground.bench.report import EvalPoint, TimedRun
from ml_playground.bench.shapes import ModelShape
from ml_playground.bench.timing import StepClock
from ml_playground.config import DataConfig, ScheduleConfig
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

    def build(self, shape: ModelShape, vocab_size: int, device: torch.device, *, dropout: float = 0.0) -> nn.Module:
        config_class = cast("Callable[..., Any]", self.module.GPTConfig)
        model_class = cast("Callable[[Any], nn.Module]", self.module.GPT)
        config = config_class(**asdict(shape), vocab_size=vocab_size, dropout=dropout, bias=False)
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


@dataclass(frozen=True, slots=True)
class RowBatches:
    """nanoGPT's get_batch: reopen the memmap, random starts, one row tensor per start, stack;
    on CUDA pinned and copied without blocking."""

    path: Path
    dtype: np.dtype[Any]
    spec: TrainPy
    device: torch.device

    def __call__(self) -> Batch:
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        T = self.spec.shape.block_size
        starts = cast("list[int]", torch.randint(len(data) - T, (self.spec.batch_size,)).tolist())
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in starts])
        if self.device.type == "cuda":  # pinned and asynchronous, as train.py copies on CUDA
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainPy:
    """How nanoGPT's scripts train one side-by-side run: train.py by default; bench.py with
    `grad_clip=0`, `read_every=1` and no schedule."""

    shape: ModelShape
    vocab_size: int
    batch_size: int
    dropout: float = 0.0
    grad_clip: float = 1.0  # 0: no clipping (bench.py)
    read_every: int = 1  # loss.item() every log_interval steps
    bf16: bool = False  # autocast forward
    compile: bool = False  # `model = torch.compile(model)`, done in place
    seed: int = 1337
    schedule: ScheduleConfig | None = None  # warmup + cosine from learning_rate; None: constant (bench.py)
    learning_rate: float = 1e-3
    iters: int = 2000  # a whole run (`train_py_run`): its iterations and evaluations
    eval_interval: int = 250
    eval_iters: int = 20


def set_up(nanogpt: NanoGPT, spec: TrainPy, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """nanoGPT's model and AdamW from `spec`'s seed, compiled from scratch as a fresh process would."""
    torch.compiler.reset()
    torch.manual_seed(spec.seed)
    model = nanogpt.build(spec.shape, spec.vocab_size, device, dropout=spec.dropout)
    optimizer = nanogpt.optimizer(model, device)
    if spec.compile:
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
    (under bf16 autocast when `spec.bf16`), the next batch fetched while the device runs it, backward,
    clip, AdamW, `zero_grad(set_to_none=True)`, `loss.item()` every `read_every` steps.
    Returns the loss and the next batch."""
    if spec.schedule is not None:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, spec.learning_rate, spec.schedule)
    x, y = batch
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=spec.bf16):
        _, loss = cast("tuple[Tensor, Tensor]", model(x, y))
    following = batches()
    torch.autograd.backward(loss)
    if spec.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if it % spec.read_every == 0:
        loss.item()
    return loss.detach(), following


def train_py_steps(
    nanogpt: NanoGPT, spec: TrainPy, data: DataConfig, device: torch.device, clock: StepClock, steps: int
) -> float:
    """`steps` iterations of `train_py_step`, each stamped on `clock`; the last loss."""
    model, optimizer = set_up(nanogpt, spec, device)
    batches = RowBatches(data.train_path, read_meta(data.meta_path).numpy_dtype, spec, device)
    batch, loss = batches(), torch.full((), math.nan)
    for it in range(steps):
        loss, batch = train_py_step(model, optimizer, batch, batches, it, spec)
        clock.stamp()
    return float(loss)


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


def train_py_run(nanogpt: NanoGPT, spec: TrainPy, data: DataConfig, device: torch.device, checkpoint: Path) -> TimedRun:
    """train.py's whole run of `spec.iters`, compilation included: both splits evaluated every
    `eval_interval` iterations including 0 and the last, a checkpoint (model + optimizer,
    torch.save) whenever val improves after iteration 0, `train_py_step` between."""
    started = time.time()
    model, optimizer = set_up(nanogpt, spec, device)
    dtype = read_meta(data.meta_path).numpy_dtype
    train, val = RowBatches(data.train_path, dtype, spec, device), RowBatches(data.val_path, dtype, spec, device)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    curve: list[EvalPoint] = []
    batch = train()
    for it in range(spec.iters + 1):
        if it % spec.eval_interval == 0 or it == spec.iters:
            nanogpt_eval(model, train, spec.eval_iters, bf16=spec.bf16)
            val_loss = nanogpt_eval(model, val, spec.eval_iters, bf16=spec.bf16)
            if it > 0 and val_loss < min(point.val_loss for point in curve):
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
            curve.append(EvalPoint(seconds=time.time() - started, iter=it, val_loss=val_loss))
        if it < spec.iters:
            _, batch = train_py_step(model, optimizer, batch, train, it, spec)
    return TimedRun(total_seconds=time.time() - started, curve=tuple(curve))


def nanogpt_generate(model: nn.Module, prompt: Tensor, max_new_tokens: int) -> Tensor:
    """sample.py's call: model.generate(x, max_new_tokens, temperature=0.8, top_k=200)."""
    generate = cast("Callable[..., Tensor]", model.generate)
    return generate(prompt, max_new_tokens, temperature=0.8, top_k=200)
