"""Case 3: wall clock of `make train` (`train`) with the shipped config until val loss <= 1.88,
with a checkout against nanoGPT's README CPU run (runs alternating ours, nanoGPT, nanoGPT, ours, ...).
Also the shipped-config runs of cases 7-8 (`shipped_config`, `timed_training`)."""

from __future__ import annotations

import importlib
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import REFERENCE_TIME_TO_QUALITY_S, NanoGPT, TrainPy, train_py_run
from ml_playground.bench.report import EvalPoint, Quality, Row, TimedRun
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


def timed_training(cfg: TrainConfig) -> TimedRun:
    """`train` from an empty out_dir; the curve is read back from the run's TensorBoard events."""
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


def _nanogpt_run(nanogpt: NanoGPT, ctx: BenchContext, cfg: TrainConfig) -> TimedRun:
    """nanoGPT's README CPU run: 2000 iters, eval of 20 batches per split every 250 iters."""
    spec = TrainPy(
        shape=ModelShape(n_layer=4, n_head=4, n_embd=128, block_size=64),
        vocab_size=ctx.char_meta.vocab_size,
        batch_size=12,
        schedule=ScheduleConfig(warmup_iters=100, lr_decay_iters=2000, min_lr=1e-4),
    )
    if ctx.tiny:
        schedule = ScheduleConfig(warmup_iters=100, lr_decay_iters=6, min_lr=1e-4)
        spec = replace(spec, shape=ctx.sizes.small, batch_size=ctx.sizes.small_batch, schedule=schedule, iters=6)
        spec = replace(spec, eval_interval=3, eval_iters=2)
    return train_py_run(nanogpt, spec, cfg.data, ctx.device, ctx.work_dir / "case3-nanogpt" / "ckpt.pt")


def quality(runs: list[TimedRun], iters: int) -> Quality:
    """One side's runs: the means (time to the threshold None when a run never reached it; a run
    that never reached it counts with its whole time in `seconds_per_run`) and each curve."""
    reached = [next((p for p in run.curve if p.val_loss <= QUALITY_THRESHOLD), None) for run in runs]
    return Quality(
        threshold=QUALITY_THRESHOLD,
        seconds_to_threshold=None if None in reached else sum(p.seconds for p in reached if p) / len(runs),
        iter_at_threshold=None if reached[0] is None else reached[0].iter,
        final_val_loss=sum(run.curve[-1].val_loss for run in runs) / len(runs),
        iters=iters,
        total_seconds=sum(run.total_seconds for run in runs) / len(runs),
        runs=len(runs),
        seconds_per_run=tuple(
            run.total_seconds if p is None else p.seconds for run, p in zip(runs, reached, strict=True)
        ),
        curves=tuple(run.curve for run in runs),
    )


def _summary(metrics: Quality) -> str:
    seconds = metrics.seconds_to_threshold
    at = "not reached" if seconds is None else f"{seconds:.1f} s (iter {metrics.iter_at_threshold})"
    each = ", ".join(f"{s:.1f}" for s in metrics.seconds_per_run)
    runs = f"; mean of {metrics.runs} runs: {each} s" if metrics.runs > 1 else ""
    final = f"final val {metrics.final_val_loss:.4f} after {metrics.iters} iters in {metrics.total_seconds:.1f} s"
    text = f"{at}; {final}{runs}"
    if metrics.vs_nanogpt is not None:
        text += f"  {metrics.vs_nanogpt * 100:.0f}% of nanoGPT's time ({metrics.nanogpt_baseline})"
    return text


def case3_time_to_quality(ctx: BenchContext, config_path: Path, runs: int) -> list[Row]:
    """`runs` fresh `train` runs of the shipped config per side, alternating; means reported."""
    cfg = quality_config(ctx, config_path)
    preload_optimizer_imports()
    nanogpt = ctx.nanogpt
    ours_runs, theirs_runs = alternate(
        lambda: timed_training(cfg), None if nanogpt is None else lambda: _nanogpt_run(nanogpt, ctx, cfg), runs
    )
    rows: list[Row] = []
    baseline, source = REFERENCE_TIME_TO_QUALITY_S, "reference"
    if theirs_runs:
        theirs = quality(theirs_runs, 6 if ctx.tiny else 2000)
        baseline, source = statistics.mean(theirs.seconds_per_run), "measured"
        rows.append(Row(case=CASE, variant=NANOGPT_VARIANT, summary=_summary(theirs), metrics=theirs))
    ours = replace(quality(ours_runs, cfg.runtime.max_iters), config=str(config_path), nanogpt_baseline=source)
    if ours.seconds_to_threshold is not None:
        ours = replace(ours, vs_nanogpt=ours.seconds_to_threshold / baseline)
    return [Row(case=CASE, variant=f"ml-playground {config_path.name}", summary=_summary(ours), metrics=ours), *rows]
