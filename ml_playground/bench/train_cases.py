"""Cases 1-2: training step throughput through `train` (what `make train` runs), and what every
step case (1, 2, 6) shares: `timed_steps` stamps each step of a `train` run through its `on_step`
callback, `our_steps` measures our side (nanoGPT's: `train_py_steps`), `compared` sets ours against nanoGPT's."""

from __future__ import annotations

import itertools
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from ml_playground.bench.context import BenchContext, ModelShape
from ml_playground.bench.nanogpt import REFERENCE_TRAIN_TOKENS_PER_S, TrainPy, train_py_steps
from ml_playground.bench.report import Row, Skipped, Throughput
from ml_playground.bench.timing import StepClock, alternate
from ml_playground.config import (
    DataConfig,
    DType,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TrainRuntimeConfig,
)
from ml_playground.model import GPT
from ml_playground.runtime import TORCH_DTYPES
from ml_playground.train.distributed import grad_accum_steps_for
from ml_playground.train.loop import train
from ml_playground.train.metrics import TB_SUBDIR, flops_per_token, measure_peak_flops, read_scalars
from ml_playground.train.modes import Mode, Start

CASE1 = "1 train 4x128 B12 T64"
CASE2 = "2 train 6x384 B16 T256"
ROUNDS = 3  # case 1's alternating runs per side when nanoGPT runs too
LOG_INTERVAL = 5  # windows short enough that several fit in the timed steps


class LoggedVsWall(NamedTuple):
    """The logged throughput windows after warm-up against the wall clock of the same steps."""

    logged_seconds: float  # sum over the windows of steps x the logged ms per step
    wall_seconds: float  # the same steps between their `on_step` stamps
    steps: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRun:
    """What `timed_steps` measured."""

    seconds: tuple[float, ...]  # each timed step (or window's mean step) after warm-up
    losses: tuple[float, ...]  # every step's loss, warm-up included
    flops_per_token: float  # of the run's target, for MFU
    logged: LoggedVsWall | None  # None: fewer than two log steps after warm-up


def logged_vs_wall(step_ms: list[tuple[int, float]], stamps: dict[int, float], *, first: int) -> LoggedVsWall | None:
    """The log windows from the first to the last stamped log step at or after step `first`: a
    window ending at log step b after log step a holds steps a+1..b, logged as (b - a) x b's ms per
    step; on the wall clock the whole span is stamps[last] - stamps[first] (`stamps[i]` ends step i)."""
    logged = sorted((step, ms) for step, ms in step_ms if step >= first)
    stamped = [step for step, _ in logged if step in stamps]
    if len(stamped) < 2:
        return None
    lo, hi = stamped[0], stamped[-1]
    window = [(step, ms) for step, ms in logged if lo <= step <= hi]
    return LoggedVsWall(
        logged_seconds=sum((b - a) * ms_b / 1000 for (a, _), (b, ms_b) in itertools.pairwise(window)),
        wall_seconds=stamps[hi] - stamps[lo],
        steps=hi - lo,
    )


def pooled(runs: Sequence[LoggedVsWall | None]) -> float | None:
    """Logged tokens/s over wall-clock tokens/s of every measured run's steps together (1.0: the
    log tells the truth); None: none measured."""
    measured = [run for run in runs if run is not None]
    logged = sum(run.logged_seconds for run in measured)
    return sum(run.wall_seconds for run in measured) / logged if measured else None


def train_config(ctx: BenchContext, shape: ModelShape, batch_size: int) -> TrainConfig:
    """nanoGPT's train_shakespeare_char optimizer settings around `shape`, on the benchmark's
    char-level corpus, in float32 without compile; no steps yet (`timed_steps` sets them).
    MFU uses the peak this benchmark measured, so no run probes again."""
    return TrainConfig(
        model=shape.applied_to(ModelConfig()),
        data=DataConfig(dataset_dir=ctx.char_dir, batch_size=batch_size, block_size=shape.block_size),
        optim=OptimConfig(learning_rate=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0),
        schedule=ScheduleConfig(warmup_iters=100, lr_decay_iters=2000, min_lr=1e-4),
        runtime=TrainRuntimeConfig(
            out_dir=ctx.work_dir / "run",
            device=ctx.device_name,
            max_iters=0,
            eval_iters=1,
            log_interval=LOG_INTERVAL,
            peak_flops=ctx.peak("float32"),
        ),
    )


def readme_config(ctx: BenchContext, max_iters: int) -> TrainConfig:
    """nanoGPT's README CPU run of `max_iters` (train_shakespeare_char at the small shape, eval of 20
    batches every 250 iterations, log_interval 1); `--tiny`: eval of 2 batches every 3."""
    cfg = train_config(ctx, ctx.sizes.small, ctx.sizes.small_batch)
    eval_interval, eval_iters = (3, 2) if ctx.tiny else (250, 20)
    runtime = replace(cfg.runtime, max_iters=max_iters, eval_interval=eval_interval, eval_iters=eval_iters)
    return replace(cfg, runtime=replace(runtime, log_interval=1))


def precision(ctx: BenchContext, cfg: TrainConfig, *, dtype: DType, compile: bool) -> TrainConfig:
    """`cfg` computing in `dtype` (MFU against that dtype's measured peak), compiled or not."""
    return replace(cfg, runtime=replace(cfg.runtime, dtype=dtype, compile=compile, peak_flops=ctx.peak(dtype)))


def fresh_run(cfg: TrainConfig, out_dir: Path, *, steps: int) -> TrainConfig:
    """`cfg` for `steps` steps into an emptied `out_dir` (a leftover ckpt_last.pt would be
    resumed), evaluating only before the first step and after the last."""
    shutil.rmtree(out_dir, ignore_errors=True)
    return replace(cfg, runtime=replace(cfg.runtime, out_dir=out_dir, max_iters=steps, eval_interval=max(steps, 1)))


def timed_steps(
    ctx: BenchContext, cfg: TrainConfig, out_dir: Path, *, warmup: int, reps: int, every: int = 1
) -> StepRun:
    """A fresh `train` of warmup + reps timed steps (plus the first, which has no stamp before it),
    stamped every `every` steps (`StepClock`); reps is rounded up to whole windows."""
    clock = StepClock(ctx.device, every=every)
    losses: list[Tensor] = []
    flops: list[float] = []

    class Measured(Mode):
        def build(self, start: Start) -> GPT:
            model = super().build(start)
            flops.append(flops_per_token(model, start.cfg.data.block_size))
            return model

    def on_step(_iter_num: int, loss: Tensor) -> None:
        clock.stamp()
        losses.append(loss)  # read after the run: reading it now would wait for the device

    warmup, steps = clock.plan(warmup, reps)
    train(fresh_run(cfg, out_dir, steps=steps), Measured(), on_step=on_step)
    step_ms = read_scalars(out_dir / TB_SUBDIR).get("train/step_time_ms", [])
    return StepRun(
        seconds=clock.steps(warmup),
        losses=tuple(float(loss) for loss in losses),
        flops_per_token=flops[0],
        logged=logged_vs_wall(step_ms, dict(zip(itertools.count(0, every), clock.stamps, strict=False)), first=warmup),
    )


def peak_now(ctx: BenchContext, dtype: DType) -> float:
    """The larger of the run's first peak probe and one taken now, right after a case's timed
    steps: a single probe that hits a slow moment of a shared machine puts MFU above 100%."""
    return max(ctx.peak(dtype), measure_peak_flops(ctx.device, TORCH_DTYPES[dtype], repeats=5))


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
    run = timed_steps(ctx, cfg, ctx.work_dir / name, warmup=warmup, reps=ctx.reps, every=every)
    dtype = cfg.runtime.dtype
    peak = peak_now(ctx, dtype) if probe else ctx.peak(dtype)
    metrics = throughput(run.seconds, cfg, run.losses[-1], flops_per_token=run.flops_per_token, peak=peak)
    return replace(metrics, logged_vs_wall=pooled([run.logged])), run


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
    if baseline is not None:
        ours = [(name, replace(m, vs_nanogpt=m.tokens_per_s / baseline, nanogpt_baseline=source)) for name, m in ours]
    return [Row(case=case, variant=name, summary=summary(m), metrics=m) for name, m in [*ours, *filter(None, [theirs])]]


def case1_train_small(ctx: BenchContext) -> list[Row]:
    """nanoGPT's README CPU config in float32: ml-playground's `train` vs nanoGPT's train.py loop."""
    cfg, nanogpt = train_config(ctx, ctx.sizes.small, ctx.sizes.small_batch), ctx.nanogpt
    spec = TrainPy(cfg=cfg, vocab_size=ctx.char_meta.vocab_size)
    rounds = ROUNDS if nanogpt is not None else 1
    reps = -(-ctx.reps // rounds)
    ours_runs, theirs_runs = alternate(
        lambda: timed_steps(ctx, cfg, ctx.work_dir / "case1", warmup=ctx.warmup, reps=reps),
        None if nanogpt is None else lambda: train_py_steps(nanogpt, spec, ctx.device, warmup=ctx.warmup, reps=reps),
        rounds,
    )
    peak, flops = peak_now(ctx, "float32"), ours_runs[0].flops_per_token
    seconds = [sample for run in ours_runs for sample in run.seconds]
    ours = throughput(seconds, cfg, ours_runs[-1].losses[-1], flops_per_token=flops, peak=peak)
    rows = [("ml-playground fp32", replace(ours, logged_vs_wall=pooled([run.logged for run in ours_runs])))]
    if ctx.compile:
        compiled = precision(ctx, cfg, dtype="float32", compile=True)
        rows.append(
            ("ml-playground fp32 compile", our_steps(ctx, compiled, "case1c", warmup=ctx.warmup + 2, probe=True)[0])
        )
    theirs = None
    if theirs_runs:
        seconds = [sample for run, _ in theirs_runs for sample in run]
        metrics = throughput(seconds, cfg, theirs_runs[-1][1], flops_per_token=flops, peak=peak)
        theirs = "nanoGPT fp32 (checkout)", metrics
    return compared(CASE1, rows, theirs, REFERENCE_TRAIN_TOKENS_PER_S)


def case2_train_mid(ctx: BenchContext) -> list[Row]:
    """A mid-size model: float32 vs bfloat16 autocast (vs torch.compile), MFU of each dtype's peak.
    Every variant starts from the same weights and batches (`train` seeds both from the config), so
    the steps' losses show whether bfloat16 follows the float32 curve."""
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
        metrics, run = our_steps(ctx, variant_cfg, f"case2-{dtype}-{compile}", warmup=warmup, probe=True)
        if fp32 is None:
            fp32 = metrics, run
        else:
            gap = max(abs(a - b) for a, b in zip(run.losses, fp32[1].losses, strict=False))
            metrics = replace(metrics, vs_fp32=metrics.tokens_per_s / fp32[0].tokens_per_s, max_loss_gap_vs_fp32=gap)
        rows.append(Row(case=CASE2, variant=name, summary=summary(metrics), metrics=metrics))
    return rows
