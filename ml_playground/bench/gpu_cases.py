"""Cases 6-7 (CUDA): nanoGPT's GPU runs side by side, both in bfloat16 autocast under torch.compile.

Case 6 times steps in windows of `WINDOW` (a device sync at each end; a sync per step would keep the
host from queueing the next step, which neither trainer does), ours through `train` with the shipped
GPU configs: train_shakespeare_char's shape against train.py's step, GPT-2 124M at bench.py's
micro-batch and as shipped against bench.py. Case 7 is train_shakespeare_char's whole run of 2000
steps (compilation included) against train.py's loop. On another device both report skipped rows,
except in a --tiny smoke run, which runs them anywhere at tiny sizes (float32 on a CPU).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import NanoGPT, TrainPy, train_py_run
from ml_playground.bench.quality_case import shipped_config, timed_training
from ml_playground.bench.report import GpuSkipped, Row, Throughput, TimedRun, WholeRun
from ml_playground.bench.shapes import ModelShape
from ml_playground.bench.train_cases import compared, nanogpt_steps, our_steps, throughput
from ml_playground.config import PROJECT_ROOT, TrainConfig
from ml_playground.data.prepare import prepare_corpus
from ml_playground.train.distributed import grad_accum_steps_for

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


def _skipped(ctx: BenchContext, *cases: str) -> list[Row] | None:
    if ctx.device.type == "cuda" or ctx.tiny:
        return None
    return [
        Row(case=case, variant="skipped", summary="skipped: needs --device cuda", metrics=GpuSkipped())
        for case in cases
    ]


def gpu_config(ctx: BenchContext, path: Path, dataset_dir: Path, name: str) -> TrainConfig:
    """A shipped GPU config as `shipped_config` runs it (`--tiny`: in float32 on a CPU)."""
    cfg = shipped_config(ctx, path, ctx.work_dir / name, dataset_dir)
    if not ctx.tiny:
        return cfg
    dtype = "float32" if ctx.device.type == "cpu" else cfg.runtime.dtype
    data = replace(cfg.data, grad_accum_steps=1, global_batch_size=None)
    return replace(cfg, data=data, runtime=replace(cfg.runtime, compile=ctx.compile, dtype=dtype))


def train_py(cfg: TrainConfig, vocab_size: int) -> TrainPy:
    """nanoGPT's side of `cfg`: its shape, batch, dropout, clip, precision, compile, seed and schedule."""
    model = cfg.model
    shape = ModelShape(n_layer=model.n_layer, n_head=model.n_head, n_embd=model.n_embd, block_size=model.block_size)
    return TrainPy(
        shape=shape,
        vocab_size=vocab_size,
        batch_size=cfg.data.batch_size,
        dropout=model.dropout,
        grad_clip=cfg.optim.grad_clip,
        read_every=TRAIN_PY_LOG_INTERVAL,
        bf16=cfg.runtime.dtype == "bfloat16",
        compile=cfg.runtime.compile,
        seed=cfg.runtime.seed,
        schedule=cfg.schedule,
        learning_rate=cfg.optim.learning_rate,
        iters=cfg.runtime.max_iters,
        eval_interval=cfg.runtime.eval_interval,
        eval_iters=cfg.runtime.eval_iters,
    )


def _theirs(
    ctx: BenchContext, nanogpt: NanoGPT | None, variant: str, spec: TrainPy, cfg: TrainConfig, flops: float
) -> tuple[str, Throughput] | None:
    if nanogpt is None:
        return None
    seconds, loss = nanogpt_steps(nanogpt, ctx, spec, cfg, every=WINDOW, reps=ctx.reps)
    return variant, throughput(seconds, cfg, loss, flops_per_token=flops, peak=ctx.peaks.of(cfg.runtime.dtype))


def case6_gpu_steps(ctx: BenchContext) -> list[Row]:
    """Training steps at train_shakespeare_char's and GPT-2 124M's shapes, ours and nanoGPT's."""
    skipped = _skipped(ctx, CASE6_CHAR, CASE6_GPT2)
    if skipped is not None:
        return skipped
    char = gpu_config(ctx, CHAR_CONFIG, ctx.char_dir, "case6-char")
    ours, steps = our_steps(ctx, char, "case6-char", every=WINDOW, warmup=ctx.warmup)
    spec = train_py(char, ctx.char_meta.vocab_size)
    theirs = _theirs(ctx, ctx.nanogpt, "nanoGPT train.py step", spec, char, steps.flops_per_token)
    rows = compared(CASE6_CHAR, [(f"ml-playground {CHAR_CONFIG.name}", ours)], theirs, None)

    gpt2_dir = ctx.work_dir / "gpt2"
    prepare_corpus(ctx.corpus, gpt2_dir, tokenizer="tiktoken", encoding="gpt2", val_fraction=0.1)
    shipped = gpu_config(ctx, GPT2_CONFIG, gpt2_dir, "case6-gpt2-config")
    batch = BENCH_PY_BATCH if not ctx.tiny else ctx.sizes.small_batch
    data = replace(shipped.data, batch_size=batch, grad_accum_steps=1, global_batch_size=None)
    at_bench_py = replace(shipped, data=data)
    ours_b12, steps = our_steps(ctx, at_bench_py, "case6-gpt2-b12", every=WINDOW, warmup=ctx.warmup)
    ours_cfg, _ = our_steps(ctx, shipped, "case6-gpt2-config", every=WINDOW, warmup=ctx.warmup)
    bench_py = replace(train_py(at_bench_py, BENCH_PY_VOCAB), grad_clip=0.0, read_every=1, schedule=None)
    theirs = _theirs(ctx, ctx.nanogpt, "nanoGPT bench.py", bench_py, at_bench_py, steps.flops_per_token)
    micro = f"B{shipped.data.batch_size}x{grad_accum_steps_for(shipped.data, 1)}"
    ours_rows = [(f"ml-playground B{batch}", ours_b12), (f"ml-playground {GPT2_CONFIG.name} {micro}", ours_cfg)]
    return rows + compared(CASE6_GPT2, ours_rows, theirs, None)


def _whole_run(run: TimedRun, iters: int) -> WholeRun:
    vals = [point.val_loss for point in run.curve]
    return WholeRun(seconds=run.total_seconds, iters=iters, final_val_loss=vals[-1], best_val_loss=min(vals))


def _run_summary(metrics: WholeRun) -> str:
    text = f"{metrics.seconds:7.1f} s for {metrics.iters} iters; val {metrics.final_val_loss:.4f}"
    if metrics.vs_nanogpt is not None:
        text += f"  {metrics.vs_nanogpt * 100:.0f}% of nanoGPT's time"
    return text


def case7_gpu_run(ctx: BenchContext) -> list[Row]:
    """train_shakespeare_char for 2000 steps with its evaluations, ours and nanoGPT's train.py loop."""
    skipped = _skipped(ctx, CASE7)
    if skipped is not None:
        return skipped
    cfg = gpu_config(ctx, CHAR_CONFIG, ctx.char_dir, "case7")
    if not ctx.tiny:
        runtime = replace(cfg.runtime, max_iters=RUN_ITERS, eval_interval=RUN_EVAL_INTERVAL, eval_iters=RUN_EVAL_ITERS)
        cfg = replace(cfg, runtime=runtime)
    torch.compiler.reset()  # each side compiles from scratch, as a fresh process would
    ours = _whole_run(timed_training(cfg), cfg.runtime.max_iters)
    rows: list[Row] = []
    if ctx.nanogpt is not None:
        checkpoint = ctx.work_dir / "case7-nanogpt" / "ckpt.pt"
        run = train_py_run(ctx.nanogpt, train_py(cfg, ctx.char_meta.vocab_size), cfg.data, ctx.device, checkpoint)
        theirs = _whole_run(run, cfg.runtime.max_iters)
        ours = replace(ours, vs_nanogpt=ours.seconds / theirs.seconds)
        rows.append(Row(case=CASE7, variant="nanoGPT train.py loop", summary=_run_summary(theirs), metrics=theirs))
    return [
        Row(case=CASE7, variant=f"ml-playground {CHAR_CONFIG.name}", summary=_run_summary(ours), metrics=ours),
        *rows,
    ]
