"""Cases 6-7 (CUDA): steps at nanoGPT's GPU shapes and the whole char run, with the shipped GPU
configs against nanoGPT's train.py and bench.py, in bfloat16 under torch.compile. On another device
they report skipped rows, except in a --tiny smoke run (then at tiny sizes, float32 on a CPU)."""

from __future__ import annotations

from dataclasses import replace

import torch

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import TrainPy, train_py_run, train_py_steps
from ml_playground.bench.quality_case import shipped_config, timed_training
from ml_playground.bench.report import GpuSkipped, Row, Throughput, TimedRun, WholeRun
from ml_playground.bench.train_cases import compared, our_steps, throughput
from ml_playground.config import PROJECT_ROOT
from ml_playground.data.prepare import prepare_corpus
from ml_playground.train.distributed import grad_accum_steps_for

CASE6_CHAR = "6 GPU step 6x384 B64 T256"
CASE6_GPT2 = "6 GPU step GPT-2 124M T1024"
CASE7 = "7 GPU run shakespeare_char 2000"
CHAR_CONFIG = PROJECT_ROOT / "ml_playground" / "configs" / "shakespeare_char_gpu.toml"
GPT2_CONFIG = CHAR_CONFIG.with_name("gpt2_124m_gpu.toml")
WINDOW = 10  # steps between two synced stamps
BENCH_PY_BATCH, BENCH_PY_VOCAB = 12, 50304  # nanoGPT's bench.py (GPT-2's vocabulary padded to a multiple of 64)
TRAIN_PY_LOG_INTERVAL = 10  # train_shakespeare_char: loss.item() every 10 steps


def _skipped(ctx: BenchContext, *cases: str) -> list[Row]:
    """Rows for `cases` on a device other than CUDA outside a --tiny run; none where they run."""
    if ctx.device.type == "cuda" or ctx.tiny:
        return []
    return [
        Row(case=case, variant="skipped", summary="skipped: needs --device cuda", metrics=GpuSkipped())
        for case in cases
    ]


def _theirs(ctx: BenchContext, variant: str, spec: TrainPy, flops: float) -> tuple[str, Throughput] | None:
    if ctx.nanogpt is None:
        return None
    seconds, loss = train_py_steps(ctx.nanogpt, spec, ctx.device, warmup=ctx.warmup, reps=ctx.reps, every=WINDOW)
    peak = ctx.peak(spec.cfg.runtime.dtype)
    return variant, throughput(seconds, spec.cfg, loss, flops_per_token=flops, peak=peak)


def case6_gpu_steps(ctx: BenchContext) -> list[Row]:
    """Training steps at train_shakespeare_char's and GPT-2 124M's shapes, ours and nanoGPT's."""
    if skipped := _skipped(ctx, CASE6_CHAR, CASE6_GPT2):
        return skipped
    char = shipped_config(ctx, CHAR_CONFIG, ctx.work_dir / "case6-char", ctx.char_dir)
    ours, run = our_steps(ctx, char, "case6-char", every=WINDOW, warmup=ctx.warmup)
    spec = TrainPy(cfg=char, vocab_size=ctx.char_meta.vocab_size, read_every=TRAIN_PY_LOG_INTERVAL)
    theirs = _theirs(ctx, "nanoGPT train.py step", spec, run.flops_per_token)
    rows = compared(CASE6_CHAR, [(f"ml-playground {CHAR_CONFIG.name}", ours)], theirs, None)

    gpt2_dir = ctx.work_dir / "gpt2"
    prepare_corpus(ctx.corpus, gpt2_dir, tokenizer="tiktoken", encoding="gpt2", val_fraction=0.1)
    shipped = shipped_config(ctx, GPT2_CONFIG, ctx.work_dir / "case6-gpt2-config", gpt2_dir)
    batch = BENCH_PY_BATCH if not ctx.tiny else ctx.sizes.small_batch
    data = replace(shipped.data, batch_size=batch, grad_accum_steps=1, global_batch_size=None)
    at_bench_py = replace(shipped, data=data)
    ours_b12, run = our_steps(ctx, at_bench_py, "case6-gpt2-b12", every=WINDOW, warmup=ctx.warmup)
    ours_cfg, _ = our_steps(ctx, shipped, "case6-gpt2-config", every=WINDOW, warmup=ctx.warmup)
    optim, schedule = replace(shipped.optim, grad_clip=0.0), replace(shipped.schedule, decay_lr=False)
    bench_py = TrainPy(cfg=replace(at_bench_py, optim=optim, schedule=schedule), vocab_size=BENCH_PY_VOCAB)
    theirs = _theirs(ctx, "nanoGPT bench.py", bench_py, run.flops_per_token)
    micro = f"B{shipped.data.batch_size}x{grad_accum_steps_for(shipped.data, 1)}"
    ours_rows = [(f"ml-playground B{batch}", ours_b12), (f"ml-playground {GPT2_CONFIG.name} {micro}", ours_cfg)]
    return rows + compared(CASE6_GPT2, ours_rows, theirs, None)


def _whole_run(run: TimedRun, iters: int) -> WholeRun:
    vals = [point.val_loss for point in run.curve]
    return WholeRun(seconds=run.total_seconds, iters=iters, final_val_loss=vals[-1], best_val_loss=min(vals))


def _run_row(variant: str, metrics: WholeRun) -> Row:
    text = f"{metrics.seconds:7.1f} s for {metrics.iters} iters; val {metrics.final_val_loss:.4f}"
    if metrics.vs_nanogpt is not None:
        text += f"  {metrics.vs_nanogpt * 100:.0f}% of nanoGPT's time"
    return Row(case=CASE7, variant=variant, summary=text, metrics=metrics)


def case7_gpu_run(ctx: BenchContext) -> list[Row]:
    """train_shakespeare_char for 2000 steps with its evaluations, ours and nanoGPT's train.py loop."""
    if skipped := _skipped(ctx, CASE7):
        return skipped
    cfg = shipped_config(ctx, CHAR_CONFIG, ctx.work_dir / "case7", ctx.char_dir)
    if not ctx.tiny:  # 200 eval batches per split every 250 steps, as train_shakespeare_char
        cfg = replace(cfg, runtime=replace(cfg.runtime, max_iters=2000, eval_interval=250, eval_iters=200))
    torch.compiler.reset()  # each side compiles from scratch, as a fresh process would
    ours, variant = _whole_run(timed_training(cfg), cfg.runtime.max_iters), f"ml-playground {CHAR_CONFIG.name}"
    if ctx.nanogpt is None:
        return [_run_row(variant, ours)]
    spec = TrainPy(cfg=cfg, vocab_size=ctx.char_meta.vocab_size, read_every=TRAIN_PY_LOG_INTERVAL)
    run = train_py_run(ctx.nanogpt, spec, ctx.device, ctx.work_dir / "case7-nanogpt" / "ckpt.pt")
    theirs = _whole_run(run, cfg.runtime.max_iters)
    ours = replace(ours, vs_nanogpt=ours.seconds / theirs.seconds)
    return [_run_row(variant, ours), _run_row("nanoGPT train.py loop", theirs)]
