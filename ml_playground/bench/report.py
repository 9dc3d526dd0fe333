"""Result rows with typed metrics per case, the console table and the JSON report."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel

from ml_playground.atomic import write_text_atomic
from ml_playground.config import DType, ModelConfig, OptimConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Throughput:
    """Cases 1-2: median training step of one variant, and what it is compared with."""

    ms_per_iter: float
    tokens_per_s: float
    mfu: float
    peak_flops: float  # the MFU denominator (see `peak_now`)
    reps: int
    dtype: DType
    compile: bool
    final_loss: float
    vs_nanogpt: float | None = None  # tokens/s over nanoGPT's
    nanogpt_baseline: str | None = None  # "measured" (a checkout) or "reference"
    vs_fp32: float | None = None  # case 2: tokens/s over the float32 variant's
    max_loss_gap_vs_fp32: float | None = None  # case 2: largest per-step loss difference from float32
    # Tokens/s the trainer logged (console, TensorBoard) over tokens/s on the wall clock of the same
    # steps after warm-up (1.0: the log is right); None when fewer than two log steps were timed.
    logged_vs_wall: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """Case 2's bf16 variants where bf16 autocast trains slower than fp32 (the trainer's probe)."""

    skipped: Literal[True] = True
    fp32_probe_ms: float  # a small MLP forward+backward in float32 (`probe_bfloat16`)
    bf16_probe_ms: float  # the same under bfloat16 autocast


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSkipped:
    """Cases 6-7 on a device other than CUDA (outside a --tiny smoke run)."""

    skipped: Literal[True] = True
    needs: str = "cuda"


@dataclass(frozen=True, slots=True, kw_only=True)
class WholeRun:
    """Case 7: one whole training run, evaluations, checkpoints and compilation included."""

    seconds: float
    iters: int
    final_val_loss: float
    best_val_loss: float
    vs_nanogpt: float | None = None  # seconds over nanoGPT's


@dataclass(frozen=True, slots=True, kw_only=True)
class StartUp:
    """Case 9: whole 1-iteration training processes of one side, the median and its runs."""

    seconds: float
    runs: int
    seconds_per_run: tuple[float, ...]
    vs_nanogpt: float | None = None  # median seconds over nanoGPT's
    minus_nanogpt: float | None = None  # median seconds minus nanoGPT's


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalPoint:
    """One evaluation of a training run: seconds since the run started, its iteration, val loss
    (and in bits per byte where the run reports it: ours, not nanoGPT's)."""

    seconds: float
    iter: int
    val_loss: float
    val_bpb: float | None = None


Curve = tuple[EvalPoint, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedRun:
    """One whole training run: its wall clock and its evaluations in seconds since its start."""

    total_seconds: float
    curve: Curve


@dataclass(frozen=True, slots=True, kw_only=True)
class Quality:
    """Case 3: the mean of one side's runs (None when a run never reached the threshold)."""

    threshold: float
    seconds_to_threshold: float | None
    iter_at_threshold: int | None  # the first run's
    final_val_loss: float
    iters: int
    total_seconds: float
    runs: int
    seconds_per_run: tuple[float, ...]  # each run's time to the threshold (its whole time if it never got there)
    curves: tuple[Curve, ...]  # each run's evaluations, in run order
    config: str | None = None  # ml-playground's row: the TOML file
    vs_nanogpt: float | None = None  # seconds over nanoGPT's
    nanogpt_baseline: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ablation:
    """Case 8: one training run of the ablation, the baseline's [train] with one option switched on
    (or the baseline itself, or the best config); deltas are against the baseline row."""

    option: str  # "baseline", "position=rope", ..., "best"
    config: str  # the TOML its [train] comes from
    model: ModelConfig
    optim: OptimConfig
    iters: int
    batch_size: int
    block_size: int
    final_val_loss: float
    total_seconds: float
    tokens_per_s: float | None  # median of the trainer's logged windows after the first; None: none logged
    equal_time_seconds: float  # the last evaluation of the case's shortest run
    val_loss_at_equal_time: float | None  # the curve interpolated there; None: no evaluation that late
    curve: Curve
    final_val_vs_baseline: float | None = None  # final val loss minus the baseline's
    val_at_equal_time_vs_baseline: float | None = None
    time_vs_baseline: float | None = None  # total seconds over the baseline's
    same_run_as: str | None = None  # the row whose run this is ("baseline": the best config is the baseline)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sampling:
    """Case 4: tokens/s of one sampling variant; the cached long run adds its latency profile."""

    tokens_per_s: float
    seconds: float
    tokens: int
    vs_nanogpt: float | None = None
    nanogpt_baseline: str | None = None
    ms_per_token_first_10pct: float | None = None
    ms_per_token_last_10pct: float | None = None
    late_over_early: float | None = None  # about 1: the cache keeps a token's cost flat


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    """Case 5: one tokenizer's preparation of the synthetic corpus, in its own process."""

    input_mb: float
    seconds: float
    mb_per_s: float
    peak_rss_mib: float
    tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareDocuments:
    """Case 5: the synthetic text as a document corpus, prepared by `workers` processes."""

    input_mb: float  # text, whatever the file format
    source_format: str
    workers: int
    seconds: float
    mb_per_s: float
    peak_rss_mib: float  # the preparing process
    worker_peak_rss_mib: float  # the largest worker process
    tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BpeComparison:
    """Case 5: preparation's GPT-2 encoder against tiktoken's own on the same text (same ids)."""

    input_mb: float
    mb_per_s: float
    tiktoken_mb_per_s: float
    ratio: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizerRun:
    """Case 10: one tokenizer on the case's corpus: its bytes per token, and the val loss of the same
    model trained for the same wall time, per token and in bits per byte."""

    corpus: str
    vocab_size: int
    bytes_per_token: float  # corpus bytes over its tokens (train and val)
    prepare_seconds: float  # preparation, a trained tokenizer's training included
    iters: int
    train_seconds: float  # steps x measured seconds per step (evaluations excluded)
    val_loss: float
    val_bpb: float


Metrics = (
    Throughput
    | Skipped
    | GpuSkipped
    | Quality
    | WholeRun
    | Ablation
    | Sampling
    | Prepare
    | PrepareDocuments
    | BpeComparison
    | StartUp
    | TokenizerRun
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One measured variant of one case."""

    case: str
    variant: str
    summary: str  # the table cell
    metrics: Metrics | None = None


def machine_info(device: torch.device) -> dict[str, Any]:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform knows), cores, torch and the device."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
    }


def format_table(rows: list[Row]) -> str:
    cells = [("case", "variant", "result"), *((row.case, row.variant, row.summary) for row in rows)]
    widths = [max(len(cell[i]) for cell in cells) for i in range(2)]
    lines = [f"{case:<{widths[0]}}  {variant:<{widths[1]}}  {result}" for case, variant, result in cells]
    return "\n".join([lines[0], "-" * max(map(len, lines)), *lines[1:]])


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """out_dir/bench_<UTC stamp>.json, and latest.json with the same content."""
    text = json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
    path = out_dir / f"bench_{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    write_text_atomic(path, text)
    write_text_atomic(out_dir / "latest.json", text)
    return path


def _finite(value: Any) -> Any:
    """As JSON: a row or its metrics with every field (None as null, tuples as lists), a config
    model with its keys; inf and nan, which JSON lacks, as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]  # pyright: ignore[reportUnknownVariableType]
    return None if isinstance(value, float) and not math.isfinite(value) else value
