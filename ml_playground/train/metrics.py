"""Training metrics: FLOPs/MFU, the console line per log_interval, and TensorBoard scalars.

MFU = achieved model FLOP/s / peak FLOP/s. Model FLOPs per token follow the PaLM paper's
appendix B: 6·N + 12·L·H·Q·T (N parameters without position embeddings, L layers, H heads, Q
head size, T context). The peak is `train.runtime.peak_flops` when set, otherwise measured once
per run by timing square matmuls in the dtype the run computes in on its device.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter  # pyright: ignore[reportPrivateImportUsage]

from ml_playground.runtime import Runtime

log = logging.getLogger(__name__)

TB_SUBDIR = Path("logs") / "tb"


def palm_flops_per_token(*, n_params: int, n_layer: int, n_head: int, head_size: int, context: int) -> float:
    """Forward + backward FLOPs per trained token (PaLM appendix B)."""
    return 6.0 * n_params + 12.0 * n_layer * n_head * head_size * context


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_peak_flops(runtime: Runtime, size: int = 1024, repeats: int = 5) -> float:
    """Best observed FLOP/s of a (size x size) @ (size x size) matmul in the run's dtype."""
    # Constant operands: matmul speed does not depend on values, and the probe must not draw from
    # the global RNG (exact resume depends on its state).
    a = torch.full((size, size), 0.5, device=runtime.device, dtype=runtime.torch_dtype)
    b = torch.full((size, size), 0.25, device=runtime.device, dtype=runtime.torch_dtype)
    best = float("inf")
    for i in range(repeats + 1):
        _sync(runtime.device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(runtime.device)
        if i > 0:  # the first call warms up kernels and caches
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / max(best, 1e-9)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStats:
    iter_num: int
    loss: float
    lr: float
    step_seconds: float
    tokens: int  # tokens trained in this step, over all ranks
    flops_per_token: float
    peak_flops: float

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / max(self.step_seconds, 1e-9)

    @property
    def mfu(self) -> float:
        return self.flops_per_token * self.tokens_per_sec / self.peak_flops


class MetricsSink:
    """Console lines and TensorBoard scalars (out_dir/logs/tb); the writer flushes at every save."""

    def __init__(self, out_dir: Path, *, purge_step: int | None = None):
        self.logdir = out_dir / TB_SUBDIR
        # purge_step drops events a killed run logged after its last checkpoint.
        self.writer = SummaryWriter(log_dir=str(self.logdir), purge_step=purge_step)

    def log_step(self, stats: StepStats) -> None:
        log.info(
            "iter %d: loss %.4f, lr %.3e, %.0f tok/s, %.1f ms, mfu %.2f%%",
            stats.iter_num,
            stats.loss,
            stats.lr,
            stats.tokens_per_sec,
            stats.step_seconds * 1000,
            stats.mfu * 100,
        )
        step = stats.iter_num
        self.writer.add_scalar("train/loss", stats.loss, step)
        self.writer.add_scalar("train/lr", stats.lr, step)
        self.writer.add_scalar("train/tokens_per_sec", stats.tokens_per_sec, step)
        self.writer.add_scalar("train/step_time_ms", stats.step_seconds * 1000, step)
        self.writer.add_scalar("train/mfu", stats.mfu, step)

    def log_eval(self, iter_num: int, losses: dict[str, float]) -> None:
        log.info("eval at iter %d: train loss %.4f, val loss %.4f", iter_num, losses["train"], losses["val"])
        self.writer.add_scalar("val/loss", losses["val"], iter_num)
        self.writer.add_scalar("eval/train_loss", losses["train"], iter_num)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
