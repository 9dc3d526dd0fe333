"""Cases 1-2: training step throughput through `train` (runs.py), and the throughput rows every step case
(1, 2, 6) shares: `our_steps` and `nanogpt_steps` measure a side, `compared` sets ours against nanoGPT's.

Case 1 is nanoGPT's README CPU config, its train.py loop side by side in runs that alternate with
ours (ours, nanoGPT, nanoGPT, ours, ...), each with its own warm-up; case 2 a mid-size model in
float32, bfloat16 autocast and torch.compile.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import REFERENCE_TRAIN_TOKENS_PER_S, NanoGPT, TrainPy, train_py_steps
from ml_playground.bench.report import Row, Skipped, Throughput
from ml_playground.bench.runs import LoggedVsWall, StepRun, precision, timed_steps, train_config
from ml_playground.bench.timing import StepClock, alternate
from ml_playground.config import DType, TrainConfig
from ml_playground.runtime import TORCH_DTYPES
from ml_playground.train.distributed import grad_accum_steps_for
from ml_playground.train.metrics import measure_peak_flops

CASE1 = "1 train 4x128 B12 T64"
CASE2 = "2 train 6x384 B16 T256"
ROUNDS = 3  # case 1's alternating runs per side when nanoGPT runs too


def peak_now(ctx: BenchContext, dtype: DType) -> float:
    """The larger of the run's first peak probe and one taken now, right after a case's timed
    steps: a single probe that hits a slow moment of a shared machine puts MFU above 100%."""
    return max(ctx.peaks.of(dtype), measure_peak_flops(ctx.device, TORCH_DTYPES[dtype], repeats=5))


def throughput(
    seconds: Sequence[float], cfg: TrainConfig, final_loss: float, *, flops_per_token: float, peak: float
) -> Throughput:
    """The median step of `seconds`, at `cfg`'s tokens per step (micro-steps included)."""
    median = statistics.median(seconds)
    tokens_per_s = cfg.data.batch_size * cfg.data.block_size * grad_accum_steps_for(cfg.data, 1) / median
    return Throughput(
        ms_per_iter=median * 1000,
        tokens_per_s=tokens_per_s,
        mfu=flops_per_token * tokens_per_s / peak,
        peak_flops=peak,
        reps=len(seconds),
        dtype=cfg.runtime.dtype,
        compile=cfg.runtime.compile,
        final_loss=final_loss,
    )


def our_steps(
    ctx: BenchContext, cfg: TrainConfig, name: str, *, every: int = 1, warmup: int, probe: bool = False
) -> tuple[Throughput, StepRun]:
    """A fresh `train` of `cfg` timed step by step (`timed_steps`); MFU against the measured peak of
    its dtype, with `probe` the larger of that and a probe right after the steps (`peak_now`)."""
    steps = timed_steps(ctx, cfg, ctx.work_dir / name, warmup=warmup, reps=ctx.reps, every=every)
    dtype = cfg.runtime.dtype
    peak = peak_now(ctx, dtype) if probe else ctx.peaks.of(dtype)
    metrics = throughput(steps.timing.samples, cfg, steps.losses[-1], flops_per_token=steps.flops_per_token, peak=peak)
    return replace(metrics, logged_vs_wall=None if steps.logged is None else steps.logged.ratio), steps


def nanogpt_steps(
    nanogpt: NanoGPT, ctx: BenchContext, spec: TrainPy, cfg: TrainConfig, *, every: int = 1, reps: int
) -> tuple[list[float], float]:
    """nanoGPT's steps on `cfg`'s data, stamped as `timed_steps` stamps ours: (the seconds per step
    of each window after warm-up, the last loss)."""
    clock = StepClock(ctx.device, every=every)
    warmup, steps = clock.plan(ctx.warmup, reps)
    loss = train_py_steps(nanogpt, spec, cfg.data, ctx.device, clock, steps)
    return list(clock.steps(warmup).samples), loss


def summary(metrics: Throughput) -> str:
    text = f"{metrics.ms_per_iter:8.2f} ms/iter {metrics.tokens_per_s:9.0f} tok/s  MFU {metrics.mfu * 100:5.1f}%"
    if metrics.logged_vs_wall is not None:
        text += f"  logged/wall {metrics.logged_vs_wall:.3f}"
    if metrics.vs_nanogpt is not None:
        text += f"  {metrics.vs_nanogpt:.2f}x nanoGPT ({metrics.nanogpt_baseline})"
    if metrics.vs_fp32 is not None:
        text += f"  {metrics.vs_fp32:.2f}x fp32, loss gap {metrics.max_loss_gap_vs_fp32:.3f}"
    return text


def compared(
    case: str, ours: list[tuple[str, Throughput]], theirs: tuple[str, Throughput] | None, reference: float | None
) -> list[Row]:
    """Our rows with their tokens/s over nanoGPT's (measured, else `reference`), then nanoGPT's row."""
    baseline, source = (theirs[1].tokens_per_s, "measured") if theirs is not None else (reference, "reference")
    rows: list[Row] = []
    for variant, metrics in [*ours, *([] if theirs is None else [theirs])]:
        if baseline is not None and (theirs is None or metrics is not theirs[1]):
            metrics = replace(metrics, vs_nanogpt=metrics.tokens_per_s / baseline, nanogpt_baseline=source)
        rows.append(Row(case=case, variant=variant, summary=summary(metrics), metrics=metrics))
    return rows


def _pooled(runs: list[LoggedVsWall | None]) -> float | None:
    measured = [run for run in runs if run is not None]
    return sum(measured[1:], measured[0]).ratio if measured else None


def case1_train_small(ctx: BenchContext) -> list[Row]:
    """nanoGPT's README CPU config in float32: ml-playground's `train` vs nanoGPT's train.py loop."""
    cfg = train_config(ctx, ctx.sizes.small, ctx.sizes.small_batch)
    nanogpt = ctx.nanogpt
    rounds = ROUNDS if nanogpt is not None else 1
    per_round = -(-ctx.reps // rounds)
    spec = TrainPy(shape=ctx.sizes.small, vocab_size=ctx.char_meta.vocab_size, batch_size=ctx.sizes.small_batch)
    spec = replace(spec, seed=cfg.runtime.seed, schedule=cfg.schedule, learning_rate=cfg.optim.learning_rate)
    ours_runs, theirs_runs = alternate(
        lambda: timed_steps(ctx, cfg, ctx.work_dir / "case1", warmup=ctx.warmup, reps=per_round),
        None if nanogpt is None else lambda: nanogpt_steps(nanogpt, ctx, spec, cfg, reps=per_round),
        rounds,
    )
    peak = peak_now(ctx, "float32")
    flops = ours_runs[0].flops_per_token
    samples = [sample for run in ours_runs for sample in run.timing.samples]
    ours = throughput(samples, cfg, ours_runs[-1].losses[-1], flops_per_token=flops, peak=peak)
    rows = [("ml-playground fp32", replace(ours, logged_vs_wall=_pooled([run.logged for run in ours_runs])))]
    if ctx.compile:
        compiled_cfg = precision(ctx, cfg, dtype="float32", compile=True)
        rows.append(
            ("ml-playground fp32 compile", our_steps(ctx, compiled_cfg, "case1c", warmup=ctx.warmup + 2, probe=True)[0])
        )
    theirs = None
    if theirs_runs:
        seconds = [sample for run, _ in theirs_runs for sample in run]
        theirs = (
            "nanoGPT fp32 (checkout)",
            throughput(seconds, cfg, theirs_runs[-1][1], flops_per_token=flops, peak=peak),
        )
    return compared(CASE1, rows, theirs, REFERENCE_TRAIN_TOKENS_PER_S)


def case2_train_mid(ctx: BenchContext) -> list[Row]:
    """A mid-size model: float32 vs bfloat16 autocast (vs torch.compile), MFU of each dtype's peak.

    Every variant starts from the same weights and sees the same batches (`train` seeds both from
    the config), so the losses of the steps show whether bfloat16 follows the float32 curve.
    """
    cfg = train_config(ctx, ctx.sizes.mid, ctx.sizes.mid_batch)
    variants: list[tuple[DType, bool]] = [("float32", False), ("bfloat16", False)]
    if ctx.compile:
        variants.extend([("float32", True), ("bfloat16", True)])
    rows: list[Row] = []
    fp32: tuple[Throughput, StepRun] | None = None
    slow_bf16 = ctx.bf16_probe.bfloat16_slower and not ctx.force_bf16  # the trainer's own check
    for dtype, compile in variants:
        name = f"{'fp32' if dtype == 'float32' else 'bf16 autocast'}{' compile' if compile else ''}"
        if dtype == "bfloat16" and slow_bf16:
            bf16, fp32_ms = ctx.bf16_probe.bfloat16_seconds * 1000, ctx.bf16_probe.float32_seconds * 1000
            text = f"skipped: bf16 autocast probe {bf16:.2f} ms > fp32 {fp32_ms:.2f} ms here (--force-bf16 runs it)"
            rows.append(
                Row(case=CASE2, variant=name, summary=text, metrics=Skipped(fp32_probe_ms=fp32_ms, bf16_probe_ms=bf16))
            )
            continue
        variant_cfg = precision(ctx, cfg, dtype=dtype, compile=compile)
        warmup = ctx.warmup + (2 if compile else 0)
        metrics, steps = our_steps(ctx, variant_cfg, f"case2-{dtype}-{compile}", warmup=warmup, probe=True)
        if fp32 is None:
            fp32 = metrics, steps
        else:
            gap = max(abs(a - b) for a, b in zip(steps.losses, fp32[1].losses, strict=False))
            metrics = replace(metrics, vs_fp32=metrics.tokens_per_s / fp32[0].tokens_per_s, max_loss_gap_vs_fp32=gap)
        rows.append(Row(case=CASE2, variant=name, summary=summary(metrics), metrics=metrics))
    return rows
