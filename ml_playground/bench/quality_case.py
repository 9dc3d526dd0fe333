"""Case 3: wall clock of `make train` (`train`) with the shipped config until val loss <= 1.88,
with a checkout against nanoGPT's README CPU run (runs alternating ours, nanoGPT, nanoGPT, ours, ...).
Also the shipped-config runs of cases 6-8 (`shipped_config`, `timed_training`)."""

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
from ml_playground.bench.timing import alternate
from ml_playground.bench.train_cases import readme_config
from ml_playground.config import TrainConfig
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
    alone). `--tiny`: the small shape and batch without accumulation, a 6-step run, float32 on a CPU,
    compiled only where the config compiles and --no-compile is not given."""
    shipped = require(load_experiment_config(path).train, path, "train")
    dtype = shipped.runtime.dtype
    runtime = replace(shipped.runtime, out_dir=out_dir, device=ctx.device_name, peak_flops=ctx.peak(dtype))
    data = replace(shipped.data, dataset_dir=ctx.char_dir if dataset_dir is None else dataset_dir)
    if not ctx.tiny:
        return replace(shipped, data=data, runtime=runtime)
    small, batch, dtype = ctx.sizes.small, ctx.sizes.small_batch, "float32" if ctx.device.type == "cpu" else dtype
    data = replace(data, block_size=small.block_size, batch_size=batch, grad_accum_steps=1, global_batch_size=None)
    runtime = replace(runtime, max_iters=6, eval_interval=3, eval_iters=2, dtype=dtype, peak_flops=ctx.peak(dtype))
    runtime = replace(runtime, compile=runtime.compile and ctx.compile)
    schedule = replace(shipped.schedule, warmup_iters=2, lr_decay_iters=6)
    return replace(shipped, model=small.applied_to(shipped.model), data=data, runtime=runtime, schedule=schedule)


def timed_training(cfg: TrainConfig) -> TimedRun:
    """`train` from an empty out_dir; the curve (wall time, iter and val loss of every evaluation)
    is read back from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shutil.rmtree(cfg.runtime.out_dir, ignore_errors=True)  # a leftover checkpoint would be resumed
    started = time.time()
    train(cfg)
    total = time.time() - started
    events = EventAccumulator(str(cfg.runtime.out_dir / TB_SUBDIR))
    events.Reload()
    scalars = cast("list[Any]", events.Scalars("val/loss"))
    bpb = {int(e.step): float(e.value) for e in cast("list[Any]", events.Scalars("val/bpb"))}
    curve = (
        EvalPoint(
            seconds=e.wall_time - started, iter=int(e.step), val_loss=float(e.value), val_bpb=bpb.get(int(e.step))
        )
        for e in scalars
    )
    return TimedRun(total_seconds=total, curve=tuple(curve))


def _nanogpt_run(nanogpt: NanoGPT, ctx: BenchContext) -> TimedRun:
    """nanoGPT's README CPU run: 2000 iters, eval of 20 batches per split every 250 iters."""
    spec = TrainPy(cfg=readme_config(ctx, 6 if ctx.tiny else 2000), vocab_size=ctx.char_meta.vocab_size)
    return train_py_run(nanogpt, spec, ctx.device, ctx.work_dir / "case3-nanogpt" / "ckpt.pt")


def quality(runs: list[TimedRun], iters: int) -> Quality:
    """One side's runs: the means (time to the threshold None when a run never reached it; a run
    that never reached it counts with its whole time in `seconds_per_run`) and each curve."""
    reached = [next((p for p in run.curve if p.val_loss <= QUALITY_THRESHOLD), None) for run in runs]
    return Quality(
        threshold=QUALITY_THRESHOLD,
        seconds_to_threshold=None if None in reached else statistics.mean(p.seconds for p in reached if p),
        iter_at_threshold=None if reached[0] is None else reached[0].iter,
        final_val_loss=statistics.mean(run.curve[-1].val_loss for run in runs),
        iters=iters,
        total_seconds=statistics.mean(run.total_seconds for run in runs),
        runs=len(runs),
        seconds_per_run=tuple(
            run.total_seconds if p is None else p.seconds for run, p in zip(runs, reached, strict=True)
        ),
        curves=tuple(run.curve for run in runs),
    )


def _row(variant: str, metrics: Quality) -> Row:
    seconds = metrics.seconds_to_threshold
    at = "not reached" if seconds is None else f"{seconds:.1f} s (iter {metrics.iter_at_threshold})"
    bpb = metrics.curves[0][-1].val_bpb if metrics.curves and metrics.curves[0] else None
    final = f"{metrics.final_val_loss:.4f}" + ("" if bpb is None else f" ({bpb:.4f} bits/byte, first run)")
    text = f"{at}; final val {final} after {metrics.iters} iters in {metrics.total_seconds:.1f} s"
    if metrics.runs > 1:
        text += f"; mean of {metrics.runs} runs: {', '.join(f'{s:.1f}' for s in metrics.seconds_per_run)} s"
    if metrics.vs_nanogpt is not None:
        text += f"  {metrics.vs_nanogpt * 100:.0f}% of nanoGPT's time ({metrics.nanogpt_baseline})"
    return Row(case=CASE, variant=variant, summary=text, metrics=metrics)


def case3_time_to_quality(ctx: BenchContext, config_path: Path, runs: int) -> list[Row]:
    """`runs` fresh `train` runs of the shipped config per side, alternating; means reported."""
    cfg = shipped_config(ctx, config_path, ctx.work_dir / "case3")
    # torch.optim's first optimizer imports torch._dynamo (~2.5 s on a 2-core CPU): imported before
    # any clock starts, or only the run timed first would pay for it.
    importlib.import_module("torch._dynamo")
    nanogpt = ctx.nanogpt
    ours_runs, theirs_runs = alternate(
        lambda: timed_training(cfg), None if nanogpt is None else lambda: _nanogpt_run(nanogpt, ctx), runs
    )
    rows: list[Row] = []
    baseline, source = REFERENCE_TIME_TO_QUALITY_S, "reference"
    if theirs_runs:
        theirs = quality(theirs_runs, 6 if ctx.tiny else 2000)
        baseline, source = statistics.mean(theirs.seconds_per_run), "measured"
        rows.append(_row(NANOGPT_VARIANT, theirs))
    ours = replace(quality(ours_runs, cfg.runtime.max_iters), config=str(config_path), nanogpt_baseline=source)
    if ours.seconds_to_threshold is not None:
        ours = replace(ours, vs_nanogpt=ours.seconds_to_threshold / baseline)
    return [_row(f"ml-playground {config_path.name}", ours), *rows]
