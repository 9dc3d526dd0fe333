"""Case 3: wall clock of `make train` (`run_training`) with the shipped config until val loss <= 1.88.

With a nanoGPT checkout its README CPU run is timed too, the runs alternating ours, nanoGPT,
nanoGPT, ours, ... so that a steady drift in the machine's speed over the minutes this takes hits
both sides alike.
"""

from __future__ import annotations

import importlib
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import REFERENCE_TIME_TO_QUALITY_S, NanoGPT, TrainPy, train_py_run
from ml_playground.bench.report import Curve, EvalPoint, Quality, QualityRun, Row
from ml_playground.bench.shapes import ModelShape
from ml_playground.bench.timing import alternate
from ml_playground.config import ScheduleConfig, TrainConfig
from ml_playground.config_loader import load_experiment_config, require
from ml_playground.train.loop import train
from ml_playground.train.metrics import TB_SUBDIR

CASE = "3 time to val 1.88"
QUALITY_THRESHOLD = 1.88
NANOGPT_VARIANT = "nanoGPT README config (checkout)"


def shipped_config(ctx: BenchContext, path: Path, out_dir: Path, dataset_dir: Path | None = None) -> TrainConfig:
    """A shipped config's [train] on the benchmark's data (`dataset_dir`, default the char-level
    corpus), device and a scratch out_dir. MFU uses the peak this benchmark measured instead of
    probing again (nanoGPT does not probe, so the probe would count against ml-playground's time
    alone). `--tiny`: the small shape, batch and a 6-step run."""
    shipped = require(load_experiment_config(path).train, path, "train")
    runtime = replace(
        shipped.runtime, out_dir=out_dir, device=ctx.device_name, peak_flops=ctx.peaks.of(shipped.runtime.dtype)
    )
    data = replace(shipped.data, dataset_dir=ctx.char_dir if dataset_dir is None else dataset_dir)
    cfg = replace(shipped, data=data, runtime=runtime)
    if not ctx.tiny:
        return cfg
    small = ctx.sizes.small
    return replace(
        cfg,
        model=small.applied_to(cfg.model),
        data=replace(cfg.data, block_size=small.block_size, batch_size=ctx.sizes.small_batch),
        runtime=replace(cfg.runtime, max_iters=6, eval_interval=3, eval_iters=2),
        schedule=replace(cfg.schedule, warmup_iters=2, lr_decay_iters=6),
    )


def quality_config(ctx: BenchContext, path: Path) -> TrainConfig:
    """Case 3's (and case 8's) run of a shipped config."""
    return shipped_config(ctx, path, ctx.work_dir / "case3")


def _val_curve(out_dir: Path) -> list[tuple[float, int, float]]:
    """(wall time, iter, val loss) of every evaluation, from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out_dir / TB_SUBDIR))
    events.Reload()
    scalars = cast("list[Any]", events.Scalars("val/loss"))
    return [(float(e.wall_time), int(e.step), float(e.value)) for e in scalars]


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedRun:
    """One fresh `run_training`: its wall clock and its evaluations in seconds since its start."""

    total_seconds: float
    curve: Curve


def timed_training(cfg: TrainConfig) -> TimedRun:
    """`run_training` from an empty out_dir; the curve is read back from the run's TensorBoard events."""
    shutil.rmtree(cfg.runtime.out_dir, ignore_errors=True)  # a leftover checkpoint would be resumed
    started = time.time()
    train(cfg)
    total = time.time() - started
    curve = tuple(
        EvalPoint(seconds=t - started, iter=step, val_loss=loss) for t, step, loss in _val_curve(cfg.runtime.out_dir)
    )
    return TimedRun(total_seconds=total, curve=curve)


def preload_optimizer_imports() -> None:
    """A process pays once for torch.optim's first optimizer, which imports torch._dynamo (~2.5 s on
    a 2-core CPU): import it before any clock starts, or only the run timed first pays it."""
    importlib.import_module("torch._dynamo")


def _quality_run(curve: Curve, *, iters: int, total_seconds: float) -> QualityRun:
    reached = next((point for point in curve if point.val_loss <= QUALITY_THRESHOLD), None)
    return QualityRun(
        threshold=QUALITY_THRESHOLD,
        seconds_to_threshold=None if reached is None else reached.seconds,
        iter_at_threshold=None if reached is None else reached.iter,
        final_val_loss=curve[-1].val_loss,
        iters=iters,
        total_seconds=total_seconds,
        curve=curve,
    )


def _our_time_to_quality(cfg: TrainConfig) -> QualityRun:
    """One fresh `run_training` with the shipped config: wall clock to the first val loss <= 1.88."""
    run = timed_training(cfg)
    return _quality_run(run.curve, iters=cfg.runtime.max_iters, total_seconds=run.total_seconds)


def _nanogpt_time_to_quality(nanogpt: NanoGPT, ctx: BenchContext, cfg: TrainConfig) -> QualityRun:
    """nanoGPT's README CPU run: 2000 iters, eval of 20 batches per split every 250 iters."""
    shape = ModelShape(n_layer=4, n_head=4, n_embd=128, block_size=64) if not ctx.tiny else ctx.sizes.small
    iters, interval, eval_iters = (2000, 250, 20) if not ctx.tiny else (6, 3, 2)
    spec = TrainPy(
        shape=shape,
        vocab_size=ctx.char_meta.vocab_size,
        batch_size=12 if not ctx.tiny else ctx.sizes.small_batch,
        schedule=ScheduleConfig(warmup_iters=100, lr_decay_iters=iters, min_lr=1e-4),
    )
    checkpoint = ctx.work_dir / "case3-nanogpt" / "ckpt.pt"
    curve, seconds = train_py_run(
        nanogpt,
        spec,
        cfg.data,
        ctx.device,
        iters=iters,
        eval_interval=interval,
        eval_iters=eval_iters,
        checkpoint=checkpoint,
    )
    return _quality_run(curve, iters=iters, total_seconds=seconds)


def _mean(runs: list[QualityRun]) -> Quality:
    """The runs averaged (None when one run never reached the threshold), and each run's time."""
    reached = [run.seconds_to_threshold for run in runs]
    return Quality(
        threshold=runs[0].threshold,
        seconds_to_threshold=None if None in reached else sum(r for r in reached if r is not None) / len(runs),
        iter_at_threshold=runs[0].iter_at_threshold,
        final_val_loss=sum(run.final_val_loss for run in runs) / len(runs),
        iters=runs[0].iters,
        total_seconds=sum(run.total_seconds for run in runs) / len(runs),
        runs=len(runs),
        seconds_per_run=tuple(run.seconds for run in runs),
        curves=tuple(run.curve for run in runs),
    )


def _summary(metrics: Quality) -> str:
    seconds = metrics.seconds_to_threshold
    at = "not reached" if seconds is None else f"{seconds:.1f} s (iter {metrics.iter_at_threshold})"
    each = ", ".join(f"{s:.1f}" for s in metrics.seconds_per_run)
    runs = f"; mean of {metrics.runs} runs: {each} s" if metrics.runs > 1 else ""
    final = metrics.final_val_loss
    return f"{at}; final val {final:.4f} after {metrics.iters} iters in {metrics.total_seconds:.1f} s{runs}"


def case3_time_to_quality(ctx: BenchContext, config_path: Path, runs: int) -> list[Row]:
    """`runs` runs per side; means reported."""
    cfg = quality_config(ctx, config_path)
    preload_optimizer_imports()
    nanogpt = ctx.nanogpt
    ours_runs, theirs_runs = alternate(
        lambda: _our_time_to_quality(cfg),
        None if nanogpt is None else lambda: _nanogpt_time_to_quality(nanogpt, ctx, cfg),
        runs,
    )
    rows: list[Row] = []
    if theirs_runs:
        theirs = _mean(theirs_runs)
        baseline, source = sum(run.seconds for run in theirs_runs) / len(theirs_runs), "measured"
        variant = NANOGPT_VARIANT
        rows.append(Row(case=CASE, variant=variant, summary=_summary(theirs), metrics=theirs))
    else:
        baseline, source = REFERENCE_TIME_TO_QUALITY_S, "reference"
    ours = replace(_mean(ours_runs), config=str(config_path), nanogpt_baseline=source)
    extra = ""
    if ours.seconds_to_threshold is not None:
        ratio = ours.seconds_to_threshold / baseline
        ours = replace(ours, vs_nanogpt=ratio)
        extra = f"  {ratio * 100:.0f}% of nanoGPT's {baseline:.0f} s ({source})"
    rows.insert(
        0, Row(case=CASE, variant=f"ml-playground {config_path.name}", summary=_summary(ours) + extra, metrics=ours)
    )
    return rows
