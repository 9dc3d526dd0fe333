"""Cases 6-7: nanoGPT's GPU runs side by side, both in bfloat16 autocast under torch.compile.

Case 6 times training steps, ours through `run` with the shipped GPU configs, nanoGPT the way its
scripts take a step (`nanogpt_gpu_step`):
- train_shakespeare_char's shape (6 x 384, batch 64 x 256, dropout 0.2): `shakespeare_char_gpu.toml`
  vs train.py's step;
- GPT-2 124M (12 x 768, block 1024): ours at bench.py's micro-batch of 12, and with
  `gpt2_124m_gpu.toml`'s own micro-batch and accumulation, vs nanoGPT's bench.py (batch 12,
  vocabulary padded to 50304, no clipping, `loss.item()` every step).
Steps are timed in windows of `WINDOW` steps with a device sync at each end (a sync per step
would keep the host from queueing the next step while the device runs this one; neither trainer
does that), after warm-up steps that include compilation.

Case 7 is train_shakespeare_char's whole run for 2000 steps (evaluation of 200 batches per split
every 250 steps, a checkpoint whenever val improves), wall clock from start to end, compilation
included: `run_training` with `shakespeare_char_gpu.toml` vs train.py's loop.

Both need CUDA: on another device they report skipped rows, except in a --tiny smoke run, which
runs every part on any device at tiny sizes (in float32 on a CPU; its numbers mean nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import NanoGPT, RowBatches, nanogpt_eval, nanogpt_gpu_step
from ml_playground.bench.report import GpuSkipped, Row, Throughput, WholeRun
from ml_playground.bench.runs import timed_steps
from ml_playground.bench.shapes import ModelShape
from ml_playground.bench.timing import StepClock
from ml_playground.config import PROJECT_ROOT, TrainConfig
from ml_playground.config_loader import load_experiment_config, require
from ml_playground.data.meta import read_meta
from ml_playground.data.prepare import prepare_corpus
from ml_playground.train.distributed import grad_accum_steps_for
from ml_playground.train.loop import train
from ml_playground.train.schedule import learning_rate

CASE6_CHAR = "6 GPU step 6x384 B64 T256"
CASE6_GPT2 = "6 GPU step GPT-2 124M T1024"
CASE7 = "7 GPU run shakespeare_char 2000"
CONFIGS = PROJECT_ROOT / "ml_playground" / "configs"
CHAR_CONFIG = CONFIGS / "shakespeare_char_gpu.toml"
GPT2_CONFIG = CONFIGS / "gpt2_124m_gpu.toml"
WINDOW = 10  # steps between two synced stamps
BENCH_PY_BATCH = 12  # nanoGPT's bench.py
BENCH_PY_VOCAB = 50304  # nanoGPT's default (GPT-2's 50257 padded to a multiple of 64)
TRAIN_PY_LOG_INTERVAL = 10  # train_shakespeare_char: loss.item() every 10 steps
RUN_ITERS, RUN_EVAL_INTERVAL, RUN_EVAL_ITERS = 2000, 250, 200


@dataclass(frozen=True, slots=True, kw_only=True)
class _Side:
    """One side's timed steps."""

    seconds_per_step: list[float]
    tokens_per_step: int
    final_loss: float


def _needs_cuda(ctx: BenchContext) -> bool:
    return ctx.device.type != "cuda" and not ctx.tiny


def _skipped(case: str) -> Row:
    return Row(case=case, variant="skipped", summary="skipped: needs --device cuda", metrics=GpuSkipped())


def shipped_gpu_config(ctx: BenchContext, path: Path, *, dataset_dir: Path, out_dir: Path) -> TrainConfig:
    """A shipped GPU config's [train] on the benchmark's data, device and scratch out_dir; MFU
    against the measured bf16 peak. --tiny shrinks the model and run to seconds, in float32."""
    cfg = require(load_experiment_config(path).train, path, "train")
    runtime = replace(cfg.runtime, out_dir=out_dir, device=ctx.device_name, peak_flops=ctx.peaks.of(cfg.runtime.dtype))
    cfg = replace(cfg, data=replace(cfg.data, dataset_dir=dataset_dir), runtime=runtime)
    if not ctx.tiny:
        return cfg
    small = ctx.sizes.small
    return replace(
        cfg,
        model=small.applied_to(cfg.model).replace(dropout=cfg.model.dropout),
        data=replace(
            cfg.data,
            block_size=small.block_size,
            batch_size=ctx.sizes.small_batch,
            grad_accum_steps=1,
            global_batch_size=None,
        ),
        runtime=replace(
            cfg.runtime,
            max_iters=6,
            eval_interval=3,
            eval_iters=2,
            compile=ctx.compile,
            dtype="float32" if ctx.device.type == "cpu" else cfg.runtime.dtype,
        ),
        schedule=replace(cfg.schedule, warmup_iters=2, lr_decay_iters=6),
    )


def _shape_of(cfg: TrainConfig) -> ModelShape:
    model = cfg.model
    return ModelShape(n_layer=model.n_layer, n_head=model.n_head, n_embd=model.n_embd, block_size=model.block_size)


def _nanogpt_steps(
    nanogpt: NanoGPT,
    ctx: BenchContext,
    cfg: TrainConfig,
    *,
    vocab_size: int,
    batch_size: int,
    grad_clip: float,
    read_every: int,
) -> _Side:
    """nanoGPT's model at `cfg`'s shape and dropout, compiled as its scripts compile it (when the
    benchmark compiles), stepped with `nanogpt_gpu_step` and stamped like `timed_steps`."""
    torch.compiler.reset()  # each side compiles from scratch, as a fresh process would
    torch.manual_seed(cfg.runtime.seed)
    shape = _shape_of(cfg)
    model = nanogpt.build(shape, vocab_size, ctx.device, dropout=cfg.model.dropout)
    optimizer = nanogpt.optimizer(model, ctx.device)
    if cfg.runtime.compile:
        model.compile()  # in place: nanoGPT's `model = torch.compile(model)` without the wrapper
    batches = RowBatches(
        cfg.data.train_path, read_meta(cfg.data.meta_path).numpy_dtype, batch_size, shape.block_size, ctx.device
    )
    clock = StepClock(ctx.device, every=WINDOW)
    warmup = -(-ctx.warmup // WINDOW) * WINDOW
    reps = -(-ctx.reps // WINDOW) * WINDOW
    batch = batches()
    loss = torch.zeros(())
    for it in range(warmup + reps + 1):
        loss, batch = nanogpt_gpu_step(
            model,
            optimizer,
            batch,
            batches,
            grad_clip=grad_clip,
            read_loss=it % read_every == 0,
            bf16=cfg.runtime.dtype == "bfloat16",
        )
        clock.stamp()
    return _Side(
        seconds_per_step=list(clock.steps(warmup).samples),
        tokens_per_step=batch_size * shape.block_size,
        final_loss=float(loss),
    )


def _throughput(side: _Side, cfg: TrainConfig, *, flops_per_token: float, peak: float) -> Throughput:
    median = sorted(side.seconds_per_step)[len(side.seconds_per_step) // 2]
    tokens_per_s = side.tokens_per_step / median
    return Throughput(
        ms_per_iter=median * 1000,
        tokens_per_s=tokens_per_s,
        mfu=flops_per_token * tokens_per_s / peak,
        peak_flops=peak,
        reps=len(side.seconds_per_step),
        dtype=cfg.runtime.dtype,
        compile=cfg.runtime.compile,
        final_loss=side.final_loss,
    )


def _ours(ctx: BenchContext, cfg: TrainConfig, name: str) -> tuple[Throughput, float]:
    torch.compiler.reset()  # each side compiles from scratch, as a fresh process would
    steps = timed_steps(ctx, cfg, ctx.work_dir / name, warmup=ctx.warmup, reps=ctx.reps, every=WINDOW)
    side = _Side(
        seconds_per_step=list(steps.timing.samples),
        tokens_per_step=cfg.data.batch_size * cfg.data.block_size * grad_accum_steps_for(cfg.data, 1),
        final_loss=steps.losses[-1],
    )
    peak = ctx.peaks.of(cfg.runtime.dtype)
    metrics = _throughput(side, cfg, flops_per_token=steps.flops_per_token, peak=peak)
    logged = None if steps.logged is None else steps.logged.ratio
    return replace(metrics, logged_vs_wall=logged), steps.flops_per_token


def _summary(metrics: Throughput, baseline: Throughput | None) -> str:
    text = f"{metrics.ms_per_iter:8.2f} ms/iter {metrics.tokens_per_s:10.0f} tok/s  MFU {metrics.mfu * 100:5.1f}%"
    if metrics.logged_vs_wall is not None:
        text += f"  logged/wall {metrics.logged_vs_wall:.3f}"
    if baseline is not None:
        text += f"  {metrics.tokens_per_s / baseline.tokens_per_s:.2f}x nanoGPT"
    return text


def _with_ratio(metrics: Throughput, baseline: Throughput | None) -> Throughput:
    if baseline is None:
        return metrics
    return replace(metrics, vs_nanogpt=metrics.tokens_per_s / baseline.tokens_per_s, nanogpt_baseline="measured")


def _case6_char(ctx: BenchContext) -> list[Row]:
    cfg = shipped_gpu_config(ctx, CHAR_CONFIG, dataset_dir=ctx.char_dir, out_dir=ctx.work_dir / "case6-char")
    ours, flops = _ours(ctx, cfg, "case6-char")
    rows: list[Row] = []
    theirs: Throughput | None = None
    if ctx.nanogpt is not None:
        side = _nanogpt_steps(
            ctx.nanogpt,
            ctx,
            cfg,
            vocab_size=ctx.char_meta.vocab_size,
            batch_size=cfg.data.batch_size,
            grad_clip=cfg.optim.grad_clip,
            read_every=TRAIN_PY_LOG_INTERVAL,
        )
        theirs = _throughput(side, cfg, flops_per_token=flops, peak=ours.peak_flops)
        rows.append(
            Row(case=CASE6_CHAR, variant="nanoGPT train.py step", summary=_summary(theirs, None), metrics=theirs)
        )
    rows.insert(
        0,
        Row(
            case=CASE6_CHAR,
            variant=f"ml-playground {CHAR_CONFIG.name}",
            summary=_summary(ours, theirs),
            metrics=_with_ratio(ours, theirs),
        ),
    )
    return rows


def _gpt2_dataset(ctx: BenchContext) -> Path:
    dataset_dir = ctx.work_dir / "gpt2"
    prepare_corpus(ctx.corpus, dataset_dir, tokenizer="tiktoken", encoding="gpt2", val_fraction=0.1)
    return dataset_dir


def _case6_gpt2(ctx: BenchContext) -> list[Row]:
    shipped = shipped_gpu_config(ctx, GPT2_CONFIG, dataset_dir=_gpt2_dataset(ctx), out_dir=ctx.work_dir / "case6-gpt2")
    bench_py_batch = BENCH_PY_BATCH if not ctx.tiny else ctx.sizes.small_batch
    at_bench_py = replace(
        shipped, data=replace(shipped.data, batch_size=bench_py_batch, grad_accum_steps=1, global_batch_size=None)
    )
    ours_b12, flops = _ours(ctx, at_bench_py, "case6-gpt2-b12")
    ours_cfg, _ = _ours(ctx, shipped, "case6-gpt2-config")
    theirs: Throughput | None = None
    rows: list[Row] = []
    if ctx.nanogpt is not None:
        side = _nanogpt_steps(
            ctx.nanogpt,
            ctx,
            at_bench_py,
            vocab_size=BENCH_PY_VOCAB,
            batch_size=bench_py_batch,
            grad_clip=0.0,
            read_every=1,
        )
        theirs = _throughput(side, at_bench_py, flops_per_token=flops, peak=ours_b12.peak_flops)
        rows.append(Row(case=CASE6_GPT2, variant="nanoGPT bench.py", summary=_summary(theirs, None), metrics=theirs))
    data = shipped.data
    rows[:0] = [
        Row(
            case=CASE6_GPT2,
            variant=f"ml-playground B{bench_py_batch}",
            summary=_summary(ours_b12, theirs),
            metrics=_with_ratio(ours_b12, theirs),
        ),
        Row(
            case=CASE6_GPT2,
            variant=f"ml-playground {GPT2_CONFIG.name} B{data.batch_size}x{grad_accum_steps_for(data, 1)}",
            summary=_summary(ours_cfg, theirs),
            metrics=_with_ratio(ours_cfg, theirs),
        ),
    ]
    return rows


def case6_gpu_steps(ctx: BenchContext) -> list[Row]:
    """Training steps at train_shakespeare_char's and GPT-2 124M's shapes, ours and nanoGPT's."""
    if _needs_cuda(ctx):
        return [_skipped(CASE6_CHAR), _skipped(CASE6_GPT2)]
    return _case6_char(ctx) + _case6_gpt2(ctx)


def _our_run(cfg: TrainConfig) -> WholeRun:
    torch.compiler.reset()
    started = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - started
    val = result.last_eval["val"] if result.last_eval is not None else float("nan")
    return WholeRun(seconds=seconds, iters=result.iter_num, final_val_loss=val, best_val_loss=result.best_val_loss)


def _nanogpt_run(nanogpt: NanoGPT, ctx: BenchContext, cfg: TrainConfig) -> WholeRun:
    """train.py's loop: evaluation (under autocast) every eval_interval steps including 0 and the
    last, a checkpoint (model + optimizer, torch.save) when val improves after step 0, the step
    of `nanogpt_gpu_step` with loss.item() every log_interval, compile included in the time."""
    torch.compiler.reset()
    started = time.perf_counter()
    torch.manual_seed(cfg.runtime.seed)
    shape = _shape_of(cfg)
    model = nanogpt.build(shape, ctx.char_meta.vocab_size, ctx.device, dropout=cfg.model.dropout)
    optimizer = nanogpt.optimizer(model, ctx.device)
    if cfg.runtime.compile:
        model.compile()  # in place: nanoGPT's `model = torch.compile(model)` without the wrapper
    dtype = ctx.char_meta.numpy_dtype
    train = RowBatches(cfg.data.train_path, dtype, cfg.data.batch_size, shape.block_size, ctx.device)
    val = RowBatches(cfg.data.val_path, dtype, cfg.data.batch_size, shape.block_size, ctx.device)
    bf16 = cfg.runtime.dtype == "bfloat16"
    iters, interval, eval_iters = cfg.runtime.max_iters, cfg.runtime.eval_interval, cfg.runtime.eval_iters
    checkpoint = ctx.work_dir / "case7-nanogpt" / "ckpt.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    best, val_loss = float("inf"), float("inf")
    batch = train()
    for it in range(iters + 1):
        if it % interval == 0 or it == iters:
            nanogpt_eval(model, train, eval_iters, bf16=bf16)
            val_loss = nanogpt_eval(model, val, eval_iters, bf16=bf16)
            if val_loss < best:
                best = val_loss
                if it > 0:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
        if it == iters:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, cfg.optim.learning_rate, cfg.schedule)
        _, batch = nanogpt_gpu_step(
            model,
            optimizer,
            batch,
            train,
            grad_clip=cfg.optim.grad_clip,
            read_loss=it % TRAIN_PY_LOG_INTERVAL == 0,
            bf16=bf16,
        )
    return WholeRun(seconds=time.perf_counter() - started, iters=iters, final_val_loss=val_loss, best_val_loss=best)


def _run_summary(metrics: WholeRun) -> str:
    text = f"{metrics.seconds:7.1f} s for {metrics.iters} iters; val {metrics.final_val_loss:.4f}"
    if metrics.vs_nanogpt is not None:
        text += f"  {metrics.vs_nanogpt * 100:.0f}% of nanoGPT's time"
    return text


def case7_gpu_run(ctx: BenchContext) -> list[Row]:
    """train_shakespeare_char for 2000 steps with its evaluations, ours and nanoGPT's train.py loop."""
    if _needs_cuda(ctx):
        return [_skipped(CASE7)]
    cfg = shipped_gpu_config(ctx, CHAR_CONFIG, dataset_dir=ctx.char_dir, out_dir=ctx.work_dir / "case7")
    if not ctx.tiny:
        runtime = replace(cfg.runtime, max_iters=RUN_ITERS, eval_interval=RUN_EVAL_INTERVAL, eval_iters=RUN_EVAL_ITERS)
        cfg = replace(cfg, runtime=runtime)
    ours = _our_run(cfg)
    rows: list[Row] = []
    if ctx.nanogpt is not None:
        theirs = _nanogpt_run(ctx.nanogpt, ctx, cfg)
        ours = replace(ours, vs_nanogpt=ours.seconds / theirs.seconds)
        rows.append(Row(case=CASE7, variant="nanoGPT train.py loop", summary=_run_summary(theirs), metrics=theirs))
    rows.insert(
        0, Row(case=CASE7, variant=f"ml-playground {CHAR_CONFIG.name}", summary=_run_summary(ours), metrics=ours)
    )
    return rows
