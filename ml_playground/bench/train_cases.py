"""Cases 1-3: training throughput (nanoGPT's CPU config, a mid-size model) and time to quality."""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from pydantic import TypeAdapter

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import (
    REFERENCE_TIME_TO_QUALITY_S,
    REFERENCE_TRAIN_TOKENS_PER_S,
    RowBatches,
    nanogpt_eval,
    nanogpt_lr,
    nanogpt_step,
)
from ml_playground.bench.report import Row, Value
from ml_playground.bench.shapes import ModelShape
from ml_playground.bench.timing import Timing, time_calls
from ml_playground.config import DType, TrainConfig
from ml_playground.config_loader import load_experiment_config, parse_experiment_config, require_train
from ml_playground.data.batches import BatchSource
from ml_playground.model import GPT
from ml_playground.runtime import TORCH_DTYPES, resolve_runtime, seed_everything
from ml_playground.train.distributed import DistInfo
from ml_playground.train.loop import LoopContext, build_loop, train_step
from ml_playground.train.metrics import TB_SUBDIR, measure_peak_flops
from ml_playground.train.run import resolve_architecture, run_training
from ml_playground.train.targets import GPTTarget

log = logging.getLogger(__name__)

_TRAIN_ADAPTER: TypeAdapter[TrainConfig] = TypeAdapter(TrainConfig)
QUALITY_THRESHOLD = 1.88


def train_config(
    ctx: BenchContext, shape: ModelShape, batch_size: int, *, dtype: str, compile: bool, out_dir: Path
) -> TrainConfig:
    """nanoGPT's train_shakespeare_char optimizer settings around the given shape."""
    table: dict[str, Any] = {
        "model": shape.table(),
        "data": {"dataset_dir": str(ctx.char_dir), "batch_size": batch_size, "block_size": shape.block_size},
        "optim": {"learning_rate": 1e-3, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0},
        "schedule": {"warmup_iters": 100, "lr_decay_iters": 2000, "min_lr": 1e-4},
        "runtime": {
            "out_dir": str(out_dir),
            "device": ctx.device.type,
            "dtype": dtype,
            "compile": compile,
            "max_iters": 2000,
        },
    }
    source = Path("<bench>")
    return require_train(parse_experiment_config({"train": table}, source), source)


def our_loop(ctx: BenchContext, cfg: TrainConfig) -> LoopContext:
    """The trainer's own loop state (optimizer, batch source, precision) for `cfg`, fresh weights."""
    runtime = resolve_runtime(cfg.runtime.device, cfg.runtime.dtype)
    seed_everything(cfg.runtime.seed)
    model = GPT(resolve_architecture(cfg, ctx.char_meta, None)).to(runtime.device)
    batches = BatchSource.for_run(cfg, ctx.char_meta.numpy_dtype, runtime.device)
    target = GPTTarget(model, compile=cfg.runtime.compile)
    return build_loop(cfg, target, batches, runtime, dist=DistInfo(), dataset_meta=None)


def interleaved(fns: dict[str, Callable[[], object]], ctx: BenchContext, rounds: int = 3) -> dict[str, Timing]:
    """Time each function in alternating rounds, so load changes hit every variant alike."""
    for fn in fns.values():
        time_calls(fn, warmup=ctx.warmup, reps=0, device=ctx.device)
    per_round = max(1, -(-ctx.reps // rounds))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].extend(time_calls(fn, warmup=0, reps=per_round, device=ctx.device).samples)
    return {name: Timing(samples=tuple(values)) for name, values in samples.items()}


def peak_now(ctx: BenchContext, dtype: DType) -> float:
    """The larger of the run's first peak probe and one taken now, right after a case's timed
    steps: a single probe that hits a slow moment of a shared machine puts MFU above 100%."""
    return max(ctx.peaks.of(dtype), measure_peak_flops(ctx.device, TORCH_DTYPES[dtype], repeats=5))


def throughput(timing: Timing, tokens_per_iter: int, flops_per_token: float, peak: float) -> dict[str, Value]:
    tokens_per_s = tokens_per_iter / timing.median
    return {
        "ms_per_iter": timing.median * 1000,
        "tokens_per_s": tokens_per_s,
        "mfu": flops_per_token * tokens_per_s / peak,
        "peak_flops": peak,
        "reps": len(timing.samples),
    }


def _summary(metrics: dict[str, Value], extra: str = "") -> str:
    ms, tps, mfu = (cast("float", metrics[k]) for k in ("ms_per_iter", "tokens_per_s", "mfu"))
    return f"{ms:8.1f} ms/iter {tps:9.0f} tok/s  MFU {mfu * 100:5.1f}%{extra}"


def _step_fn(loop: LoopContext, losses: list[float]) -> Callable[[], object]:
    def step() -> None:
        losses.append(float(train_step(loop)[0].item()))

    return step


def case1_train_small(ctx: BenchContext) -> list[Row]:
    """nanoGPT's README CPU config in float32: ml-playground's train step vs nanoGPT's."""
    shape, batch = ctx.sizes.small, ctx.sizes.small_batch
    tokens = batch * shape.block_size
    cfg = train_config(ctx, shape, batch, dtype="float32", compile=False, out_dir=ctx.work_dir / "case1")
    loop = our_loop(ctx, cfg)
    flops = loop.target.flops_per_token(shape.block_size)
    fns: dict[str, Callable[[], object]] = {"ml-playground fp32": _step_fn(loop, [])}
    if ctx.nanogpt is not None:
        torch.manual_seed(cfg.runtime.seed)
        model = ctx.nanogpt.build(shape, ctx.char_meta.vocab_size, ctx.device)
        optimizer = ctx.nanogpt.optimizer(model, ctx.device)
        batches = RowBatches(cfg.data.train_path, ctx.char_meta.numpy_dtype, batch, shape.block_size, ctx.device)
        fns["nanoGPT fp32 (checkout)"] = lambda: nanogpt_step(model, optimizer, batches)
    timings = interleaved(fns, ctx)
    peak = peak_now(ctx, "float32")
    ours = throughput(timings["ml-playground fp32"], tokens, flops, peak)
    rows: list[Row] = []
    if ctx.nanogpt is not None:
        theirs = throughput(timings["nanoGPT fp32 (checkout)"], tokens, flops, peak)
        baseline, source = cast("float", theirs["tokens_per_s"]), "measured"
        rows.append(
            Row(
                case="1 train 4x128 B12 T64",
                variant="nanoGPT fp32 (checkout)",
                summary=_summary(theirs),
                metrics=theirs,
            )
        )
    else:
        baseline, source = REFERENCE_TRAIN_TOKENS_PER_S, "reference"
    ratio = cast("float", ours["tokens_per_s"]) / baseline
    ours |= {"vs_nanogpt": ratio, "nanogpt_baseline": source}
    rows.insert(
        0,
        Row(
            case="1 train 4x128 B12 T64",
            variant="ml-playground fp32",
            summary=_summary(ours, f"  {ratio:.2f}x nanoGPT ({source})"),
            metrics=ours,
        ),
    )
    if ctx.compile:
        compiled = our_loop(
            ctx, train_config(ctx, shape, batch, dtype="float32", compile=True, out_dir=ctx.work_dir / "case1c")
        )
        metrics = throughput(
            time_calls(_step_fn(compiled, []), warmup=ctx.warmup + 2, reps=ctx.reps, device=ctx.device),
            tokens,
            flops,
            peak,
        )
        ratio = cast("float", metrics["tokens_per_s"]) / baseline
        metrics |= {"vs_nanogpt": ratio, "nanogpt_baseline": source}
        rows.append(
            Row(
                case="1 train 4x128 B12 T64",
                variant="ml-playground fp32 compile",
                summary=_summary(metrics, f"  {ratio:.2f}x nanoGPT ({source})"),
                metrics=metrics,
            )
        )
    return rows


def case2_train_mid(ctx: BenchContext) -> list[Row]:
    """A mid-size model: float32 vs bfloat16 autocast (vs torch.compile), MFU of each dtype's peak.

    Every variant starts from the same weights and sees the same batches, so the losses of the
    timed steps show whether bfloat16 follows the float32 curve.
    """
    shape, batch = ctx.sizes.mid, ctx.sizes.mid_batch
    tokens = batch * shape.block_size
    variants = [("float32", False), ("bfloat16", False)]
    if ctx.compile:
        variants += [("float32", True), ("bfloat16", True)]
    rows: list[Row] = []
    fp32_tps: float | None = None
    fp32_losses: list[float] = []
    slow_bf16 = ctx.peaks.bfloat16 < ctx.peaks.float32 and not ctx.force_bf16
    for dtype, compile in variants:
        name = f"{'fp32' if dtype == 'float32' else 'bf16 autocast'}{' compile' if compile else ''}"
        if dtype == "bfloat16" and slow_bf16:
            rows.append(_skipped_bf16(ctx, name))
            continue
        out_dir = ctx.work_dir / f"case2-{dtype}-{compile}"
        loop = our_loop(ctx, train_config(ctx, shape, batch, dtype=dtype, compile=compile, out_dir=out_dir))
        losses: list[float] = []
        warmup = ctx.warmup + (2 if compile else 0)
        timing = time_calls(_step_fn(loop, losses), warmup=warmup, reps=ctx.reps, device=ctx.device)
        metrics = throughput(
            timing, tokens, loop.target.flops_per_token(shape.block_size), peak_now(ctx, loop.cfg.runtime.dtype)
        )
        metrics["dtype"] = dtype
        metrics["compile"] = compile
        metrics["final_loss"] = losses[-1]
        extra = ""
        if dtype == "float32" and not compile:
            fp32_tps, fp32_losses = cast("float", metrics["tokens_per_s"]), losses
        elif fp32_tps is not None:
            speedup = cast("float", metrics["tokens_per_s"]) / fp32_tps
            steps = min(len(losses), len(fp32_losses))
            gap = max(abs(a - b) for a, b in zip(losses[:steps], fp32_losses[:steps], strict=True))
            metrics |= {"vs_fp32": speedup, "max_loss_gap_vs_fp32": gap}
            extra = f"  {speedup:.2f}x fp32, loss gap {gap:.3f}"
        rows.append(Row(case="2 train 6x384 B16 T256", variant=name, summary=_summary(metrics, extra), metrics=metrics))
    return rows


def _skipped_bf16(ctx: BenchContext, variant: str) -> Row:
    """No bf16 matmul hardware (AMX / AVX512-BF16): a step would take minutes; say so instead."""
    bf16, fp32 = ctx.peaks.bfloat16 / 1e9, ctx.peaks.float32 / 1e9
    summary = f"skipped: bf16 matmul peak {bf16:.1f} GFLOP/s < fp32 {fp32:.1f} GFLOP/s here (--force-bf16 runs it)"
    metrics: dict[str, Value] = {"skipped": True, "bf16_peak_flops": ctx.peaks.bfloat16}
    return Row(case="2 train 6x384 B16 T256", variant=variant, summary=summary, metrics=metrics)


def quality_config(ctx: BenchContext, config_path: Path) -> TrainConfig:
    """The shipped config's [train], pointed at the benchmark corpus and a scratch out_dir."""
    train = require_train(load_experiment_config(config_path), config_path)
    table = cast("dict[str, Any]", _TRAIN_ADAPTER.dump_python(train, mode="json"))
    table["data"]["dataset_dir"] = str(ctx.char_dir)
    # The run's MFU uses the peak this benchmark measured instead of probing again (nanoGPT
    # does not probe, so the probe would count against ml-playground's time alone).
    table["runtime"] |= {
        "out_dir": str(ctx.work_dir / "case3"),
        "device": ctx.device.type,
        "peak_flops": ctx.peaks.of(train.runtime.dtype),
    }
    if ctx.tiny:
        table["model"] |= ctx.sizes.small.table()
        table["data"] |= {"block_size": ctx.sizes.small.block_size, "batch_size": ctx.sizes.small_batch}
        table["runtime"] |= {"max_iters": 6, "eval_interval": 3, "eval_iters": 2}
        table["schedule"] |= {"warmup_iters": 2, "lr_decay_iters": 6}
    return require_train(parse_experiment_config({"train": table}, config_path), config_path)


def _val_curve(out_dir: Path) -> list[tuple[float, int, float]]:
    """(wall time, iter, val loss) of every evaluation, from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out_dir / TB_SUBDIR))
    events.Reload()
    scalars = cast("list[Any]", events.Scalars("val/loss"))
    return [(float(e.wall_time), int(e.step), float(e.value)) for e in scalars]


def _our_time_to_quality(cfg: TrainConfig) -> dict[str, Value]:
    """One fresh `run_training` with the shipped config: wall clock to the first val loss <= 1.88."""
    shutil.rmtree(cfg.runtime.out_dir, ignore_errors=True)  # a leftover checkpoint would be resumed
    started = time.time()
    run_training(cfg)
    total = time.time() - started
    curve = _val_curve(cfg.runtime.out_dir)
    reached = next(((t - started, step) for t, step, loss in curve if loss <= QUALITY_THRESHOLD), None)
    return {
        "threshold": QUALITY_THRESHOLD,
        "seconds_to_threshold": None if reached is None else reached[0],
        "iter_at_threshold": None if reached is None else reached[1],
        "final_val_loss": curve[-1][2],
        "iters": cfg.runtime.max_iters,
        "total_seconds": total,
    }


def _time_or_total(run: dict[str, Value]) -> float:
    """Seconds to the threshold; a run that never reached it counts with its whole time."""
    return cast(
        "float", run["seconds_to_threshold"] if run["seconds_to_threshold"] is not None else run["total_seconds"]
    )


def _mean_run(runs: list[dict[str, Value]]) -> dict[str, Value]:
    """The runs' metrics averaged (None when one run never reached the threshold), and each run's time."""
    mean: dict[str, Value] = dict(runs[0])
    for key in ("seconds_to_threshold", "total_seconds", "final_val_loss"):
        values = [run[key] for run in runs]
        mean[key] = None if None in values else sum(cast("float", v) for v in values) / len(values)
    mean["runs"] = len(runs)
    mean["seconds_per_run"] = ", ".join(f"{_time_or_total(run):.1f}" for run in runs)
    return mean


def case3_time_to_quality(ctx: BenchContext, config_path: Path, runs: int) -> list[Row]:
    """Wall clock of `make train` with the shipped config until val loss <= 1.88, `runs` times.

    With a nanoGPT checkout the runs alternate ours, nanoGPT, nanoGPT, ours, ... so that a steady
    drift in the machine's speed over the minutes this takes hits both sides alike.
    """
    cfg = quality_config(ctx, config_path)
    # A process pays once for torch.optim's first optimizer, which imports torch._dynamo (~2.5 s
    # on a 2-core CPU): import it before either clock starts, or only the run timed first pays it.
    importlib.import_module("torch._dynamo")
    ours: list[dict[str, Value]] = []
    theirs: list[dict[str, Value]] = []
    for run in range(runs):
        if run % 2 == 0:
            ours.append(_our_time_to_quality(cfg))
        if ctx.nanogpt is not None:
            theirs.append(_nanogpt_time_to_quality(ctx, cfg))
        if run % 2 == 1:
            ours.append(_our_time_to_quality(cfg))
    metrics = _mean_run(ours) | {"config": str(config_path)}
    rows: list[Row] = []
    if theirs:
        nanogpt = _mean_run(theirs)
        baseline, source = sum(_time_or_total(run) for run in theirs) / len(theirs), "measured"
        rows.append(
            Row(
                case="3 time to val 1.88",
                variant="nanoGPT README config (checkout)",
                summary=_quality_summary(nanogpt),
                metrics=nanogpt,
            )
        )
    else:
        baseline, source = REFERENCE_TIME_TO_QUALITY_S, "reference"
    extra = ""
    seconds = metrics["seconds_to_threshold"]
    if seconds is not None:
        metrics["vs_nanogpt"] = cast("float", seconds) / baseline
        extra = f"  {cast('float', seconds) / baseline * 100:.0f}% of nanoGPT's {baseline:.0f} s ({source})"
    metrics["nanogpt_baseline"] = source
    rows.insert(
        0,
        Row(
            case="3 time to val 1.88",
            variant=f"ml-playground {config_path.name}",
            summary=_quality_summary(metrics) + extra,
            metrics=metrics,
        ),
    )
    return rows


def _quality_summary(metrics: dict[str, Value]) -> str:
    seconds = metrics["seconds_to_threshold"]
    at = "not reached" if seconds is None else f"{cast('float', seconds):.1f} s (iter {metrics['iter_at_threshold']})"
    final = cast("float", metrics["final_val_loss"])
    total = cast("float", metrics["total_seconds"])
    runs = (
        f"; mean of {metrics['runs']} runs: {metrics['seconds_per_run']} s" if cast("int", metrics["runs"]) > 1 else ""
    )
    return f"{at}; final val {final:.4f} after {metrics['iters']} iters in {total:.1f} s{runs}"


def _nanogpt_time_to_quality(ctx: BenchContext, cfg: TrainConfig) -> dict[str, Value]:
    """nanoGPT's README CPU run: 2000 iters, eval of 20 batches per split every 250 iters."""
    nanogpt = ctx.nanogpt
    if nanogpt is None:  # pragma: no cover - callers check
        raise ValueError("no nanoGPT checkout")
    shape = ModelShape(n_layer=4, n_head=4, n_embd=128, block_size=64) if not ctx.tiny else ctx.sizes.small
    batch = 12 if not ctx.tiny else ctx.sizes.small_batch
    iters, interval, eval_iters = (2000, 250, 20) if not ctx.tiny else (6, 3, 2)
    started = time.time()
    torch.manual_seed(1337)
    model = nanogpt.build(shape, ctx.char_meta.vocab_size, ctx.device)
    optimizer = nanogpt.optimizer(model, ctx.device)
    dtype = ctx.char_meta.numpy_dtype
    train = RowBatches(cfg.data.train_path, dtype, batch, shape.block_size, ctx.device)
    val = RowBatches(cfg.data.val_path, dtype, batch, shape.block_size, ctx.device)
    reached: tuple[float, int] | None = None
    val_loss = float("inf")
    for it in range(iters + 1):
        if it % interval == 0 or it == iters:
            nanogpt_eval(model, train, eval_iters)
            val_loss = nanogpt_eval(model, val, eval_iters)
            if reached is None and val_loss <= QUALITY_THRESHOLD:
                reached = (time.time() - started, it)
        if it == iters:
            break
        for group in optimizer.param_groups:
            group["lr"] = nanogpt_lr(it, decay=iters)
        nanogpt_step(model, optimizer, train)
    return {
        "threshold": QUALITY_THRESHOLD,
        "seconds_to_threshold": None if reached is None else reached[0],
        "iter_at_threshold": None if reached is None else reached[1],
        "final_val_loss": val_loss,
        "iters": iters,
        "total_seconds": time.time() - started,
    }
