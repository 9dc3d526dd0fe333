"""Cases 1-2: training step throughput, through `run` (see runs.py) at nanoGPT's CPU config and a mid-size model.

Case 1 times nanoGPT's train.py loop side by side on the same shape and batch size, in runs that
alternate with ours (ours, nanoGPT, nanoGPT, ours, ...), each with its own warm-up.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import REFERENCE_TRAIN_TOKENS_PER_S, NanoGPT, RowBatches, nanogpt_iteration
from ml_playground.bench.report import Row, Skipped, Throughput
from ml_playground.bench.runs import LoggedVsWall, precision, timed_steps, train_config
from ml_playground.bench.shapes import ModelShape
from ml_playground.bench.timing import StepClock, Timing, alternate
from ml_playground.config import DType, TrainConfig
from ml_playground.runtime import TORCH_DTYPES
from ml_playground.train.metrics import measure_peak_flops

CASE1 = "1 train 4x128 B12 T64"
CASE2 = "2 train 6x384 B16 T256"
ROUNDS = 3  # case 1's alternating runs per side when nanoGPT runs too


def peak_now(ctx: BenchContext, dtype: DType) -> float:
    """The larger of the run's first peak probe and one taken now, right after a case's timed
    steps: a single probe that hits a slow moment of a shared machine puts MFU above 100%."""
    return max(ctx.peaks.of(dtype), measure_peak_flops(ctx.device, TORCH_DTYPES[dtype], repeats=5))


def throughput(
    timing: Timing,
    final_loss: float,
    cfg: TrainConfig,
    *,
    flops_per_token: float,
    peak: float,
    logged: LoggedVsWall | None = None,
) -> Throughput:
    tokens_per_s = cfg.data.batch_size * cfg.data.block_size / timing.median
    return Throughput(
        ms_per_iter=timing.median * 1000,
        tokens_per_s=tokens_per_s,
        mfu=flops_per_token * tokens_per_s / peak,
        peak_flops=peak,
        reps=len(timing.samples),
        dtype=cfg.runtime.dtype,
        compile=cfg.runtime.compile,
        final_loss=final_loss,
        logged_vs_wall=None if logged is None else logged.ratio,
    )


def _pooled_logged(runs: list[LoggedVsWall | None]) -> LoggedVsWall | None:
    measured = [run for run in runs if run is not None]
    return sum(measured[1:], measured[0]) if measured else None


def _summary(metrics: Throughput, extra: str = "") -> str:
    ms, tps, mfu = metrics.ms_per_iter, metrics.tokens_per_s, metrics.mfu
    logged = "" if metrics.logged_vs_wall is None else f"  logged/wall {metrics.logged_vs_wall:.3f}"
    return f"{ms:8.1f} ms/iter {tps:9.0f} tok/s  MFU {mfu * 100:5.1f}%{logged}{extra}"


def _vs_nanogpt(metrics: Throughput, baseline: float, source: str) -> tuple[Throughput, str]:
    ratio = metrics.tokens_per_s / baseline
    return replace(metrics, vs_nanogpt=ratio, nanogpt_baseline=source), f"  {ratio:.2f}x nanoGPT ({source})"


def _nanogpt_steps(
    nanogpt: NanoGPT, ctx: BenchContext, cfg: TrainConfig, shape: ModelShape, *, warmup: int, reps: int
) -> tuple[Timing, float]:
    """nanoGPT's train.py loop on `cfg`'s shape and batch size, stamped as `timed_steps` stamps
    ours: (the steps after warm-up, the last loss)."""
    torch.manual_seed(cfg.runtime.seed)
    model = nanogpt.build(shape, ctx.char_meta.vocab_size, ctx.device)
    optimizer = nanogpt.optimizer(model, ctx.device)
    batch = cfg.data.batch_size
    batches = RowBatches(cfg.data.train_path, ctx.char_meta.numpy_dtype, batch, shape.block_size, ctx.device)
    clock = StepClock(ctx.device)
    loss = float("nan")
    for it in range(warmup + reps + 1):
        loss = nanogpt_iteration(model, optimizer, batches, it)
        clock.stamp()
    return clock.steps(warmup), loss


def _pooled(timings: list[Timing]) -> Timing:
    return Timing(samples=tuple(sample for timing in timings for sample in timing.samples))


def case1_train_small(ctx: BenchContext) -> list[Row]:
    """nanoGPT's README CPU config in float32: ml-playground's `run` vs nanoGPT's train.py loop."""
    shape, batch = ctx.sizes.small, ctx.sizes.small_batch
    cfg = train_config(ctx, shape, batch)
    nanogpt = ctx.nanogpt
    rounds = ROUNDS if nanogpt is not None else 1
    per_round = -(-ctx.reps // rounds)
    ours_runs, theirs_runs = alternate(
        lambda: timed_steps(ctx, cfg, ctx.work_dir / "case1", warmup=ctx.warmup, reps=per_round),
        None
        if nanogpt is None
        else lambda: _nanogpt_steps(nanogpt, ctx, cfg, shape, warmup=ctx.warmup, reps=per_round),
        rounds,
    )
    peak = peak_now(ctx, "float32")
    flops = ours_runs[0].flops_per_token
    ours = throughput(
        _pooled([r.timing for r in ours_runs]),
        ours_runs[-1].losses[-1],
        cfg,
        flops_per_token=flops,
        peak=peak,
        logged=_pooled_logged([r.logged for r in ours_runs]),
    )
    rows: list[Row] = []
    if theirs_runs:
        theirs = throughput(
            _pooled([timing for timing, _ in theirs_runs]), theirs_runs[-1][1], cfg, flops_per_token=flops, peak=peak
        )
        baseline, source = theirs.tokens_per_s, "measured"
        rows.append(Row(case=CASE1, variant="nanoGPT fp32 (checkout)", summary=_summary(theirs), metrics=theirs))
    else:
        baseline, source = REFERENCE_TRAIN_TOKENS_PER_S, "reference"
    ours, extra = _vs_nanogpt(ours, baseline, source)
    rows.insert(0, Row(case=CASE1, variant="ml-playground fp32", summary=_summary(ours, extra), metrics=ours))
    if ctx.compile:
        compiled_cfg = precision(ctx, cfg, dtype="float32", compile=True)
        compiled = timed_steps(ctx, compiled_cfg, ctx.work_dir / "case1c", warmup=ctx.warmup + 2, reps=ctx.reps)
        metrics = throughput(
            compiled.timing,
            compiled.losses[-1],
            compiled_cfg,
            flops_per_token=flops,
            peak=peak,
            logged=compiled.logged,
        )
        metrics, extra = _vs_nanogpt(metrics, baseline, source)
        variant = "ml-playground fp32 compile"
        rows.append(Row(case=CASE1, variant=variant, summary=_summary(metrics, extra), metrics=metrics))
    return rows


def case2_train_mid(ctx: BenchContext) -> list[Row]:
    """A mid-size model: float32 vs bfloat16 autocast (vs torch.compile), MFU of each dtype's peak.

    Every variant starts from the same weights and sees the same batches (`run` seeds both from
    the config), so the losses of the steps show whether bfloat16 follows the float32 curve.
    """
    shape, batch = ctx.sizes.mid, ctx.sizes.mid_batch
    cfg = train_config(ctx, shape, batch)
    variants: list[tuple[DType, bool]] = [("float32", False), ("bfloat16", False)]
    if ctx.compile:
        variants.extend([("float32", True), ("bfloat16", True)])
    rows: list[Row] = []
    fp32: tuple[float, tuple[float, ...]] | None = None  # tokens/s and losses of the float32 variant
    slow_bf16 = ctx.bf16_probe.bfloat16_slower and not ctx.force_bf16  # the trainer's own check
    for dtype, compile in variants:
        name = f"{'fp32' if dtype == 'float32' else 'bf16 autocast'}{' compile' if compile else ''}"
        if dtype == "bfloat16" and slow_bf16:
            rows.append(_skipped_bf16(ctx, name))
            continue
        variant_cfg = precision(ctx, cfg, dtype=dtype, compile=compile)
        out_dir = ctx.work_dir / f"case2-{dtype}-{compile}"
        steps = timed_steps(ctx, variant_cfg, out_dir, warmup=ctx.warmup + (2 if compile else 0), reps=ctx.reps)
        metrics = throughput(
            steps.timing,
            steps.losses[-1],
            variant_cfg,
            flops_per_token=steps.flops_per_token,
            peak=peak_now(ctx, dtype),
            logged=steps.logged,
        )
        extra = ""
        if dtype == "float32" and not compile:
            fp32 = (metrics.tokens_per_s, steps.losses)
        elif fp32 is not None:
            fp32_tps, fp32_losses = fp32
            speedup = metrics.tokens_per_s / fp32_tps
            gap = max(abs(a - b) for a, b in zip(steps.losses, fp32_losses, strict=False))
            metrics = replace(metrics, vs_fp32=speedup, max_loss_gap_vs_fp32=gap)
            extra = f"  {speedup:.2f}x fp32, loss gap {gap:.3f}"
        rows.append(Row(case=CASE2, variant=name, summary=_summary(metrics, extra), metrics=metrics))
    return rows


def _skipped_bf16(ctx: BenchContext, variant: str) -> Row:
    """bf16 autocast trains slower than fp32 here (no AMX / AVX512-BF16): say so instead of timing it."""
    bf16, fp32 = ctx.bf16_probe.bfloat16_seconds * 1000, ctx.bf16_probe.float32_seconds * 1000
    summary = f"skipped: bf16 autocast probe {bf16:.2f} ms > fp32 {fp32:.2f} ms here (--force-bf16 runs it)"
    return Row(case=CASE2, variant=variant, summary=summary, metrics=Skipped(fp32_probe_ms=fp32, bf16_probe_ms=bf16))
