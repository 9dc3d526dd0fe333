"""Training metrics: FLOPs/MFU, the console line per log_interval, and TensorBoard scalars.

MFU = achieved model FLOP/s / peak FLOP/s. Model FLOPs per token follow the PaLM paper's
appendix B: 6·N + 12·L·H·Q·T (N parameters without position embeddings, L layers, H heads, Q
head size, T context). The peak is `train.runtime.peak_flops` when set, otherwise measured once
per run by timing square matmuls in the dtype the run computes in on its device (so MFU is
relative to what this machine actually achieves, not a datasheet number).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter  # pyright: ignore[reportPrivateImportUsage]

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


def _matmul_seconds(device: torch.device, dtype: torch.dtype, size: int) -> float:
    # Constant operands: matmul speed does not depend on values, and the probe must not draw from
    # the global RNG (exact resume depends on its state).
    a = torch.full((size, size), 0.5, device=device, dtype=dtype)
    b = torch.full((size, size), 0.25, device=device, dtype=dtype)
    _sync(device)
    start = time.perf_counter()
    torch.mm(a, b)
    _sync(device)
    return time.perf_counter() - start


def measure_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """Best FLOP/s over square matmuls of 256, 512, ... up to the first size that takes >= 20 ms
    (max 4096). Every size counts: on CPUs the largest ones outgrow the caches and run slower
    than the mid-sized matmuls a small model does, which would put its MFU above 100%."""
    _matmul_seconds(device, dtype, 256)  # warm up kernels and caches
    best, size = 0.0, 256
    while True:
        seconds = min(_matmul_seconds(device, dtype, size) for _ in range(repeats))
        best = max(best, 2.0 * size**3 / max(seconds, 1e-9))
        if seconds >= 0.02 or size >= 4096:
            return best
        size *= 2


def check_cpu_bfloat16(peak_bf16: float, device: torch.device) -> None:
    """Warn when bfloat16 autocast would slow a CPU run down (no AMX / AVX512-BF16 here)."""
    peak_fp32 = measure_peak_flops(device, torch.float32)
    if peak_bf16 < peak_fp32:
        log.warning(
            "bfloat16 matmuls run at %.1f GFLOP/s on this CPU vs %.1f in float32 (no AMX/AVX512-BF16): "
            'set train.runtime.dtype = "float32" for speed',
            peak_bf16 / 1e9,
            peak_fp32 / 1e9,
        )


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
