"""Case 10: tokenizers compared on one corpus — char-level, cl100k_base, and byte-level BPEs trained
on the corpus at two vocabulary sizes. Per tokenizer: bytes per token over the whole corpus (as
`prepare_corpus` encodes it), and val bits per byte after the same wall time of training the same
model (case 3's config, `train` itself). Equal wall time: a short timed run of each gives its
seconds per step, and the measured run gets as many steps as fit in the budget (its cosine
schedule fitted to them), so a larger vocabulary pays for its wider head in steps.

The corpus is the Bundestag speeches when bundestag_char's input is in place (the language a
trained tokenizer is for), else the benchmark's corpus (the bundled plays by default)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ml_playground.bench.context import BenchContext
from ml_playground.bench.quality_case import shipped_config
from ml_playground.bench.report import Row, TokenizerRun
from ml_playground.config import PROJECT_ROOT, TrainConfig
from ml_playground.data.prepare import TokenizerChoice, prepare_corpus
from ml_playground.train.loop import TrainResult, train

CASE = "10 tokenizers"
BUNDESTAG = PROJECT_ROOT / "ml_playground" / "experiments" / "bundestag_char" / "datasets" / "input.txt"
BPE_SIZES = (1024, 4096)
TINY_BPE_SIZES = (260, 270)  # a smoke run's corpus holds few merges
BUDGET_S = 60.0  # training seconds per tokenizer
CALIBRATION_ITERS = 12  # the timed run's steps (the first two are not timed: warm-up)


def corpus_for(ctx: BenchContext) -> Path:
    return BUNDESTAG if BUNDESTAG.is_file() and not ctx.tiny else ctx.corpus


def timed_steps(cfg: TrainConfig) -> tuple[TrainResult, float]:
    """`train` from scratch; the result and its seconds per step after the first two."""
    stamps: list[float] = []
    result = train(cfg, on_step=lambda _iter, _loss: stamps.append(time.perf_counter()))
    timed = stamps[2:] if len(stamps) > 3 else stamps
    return result, (timed[-1] - timed[0]) / max(len(timed) - 1, 1)


def run_config(base: TrainConfig, out_dir: Path, iters: int) -> TrainConfig:
    """`base` for `iters` steps, evaluated at the start and the end, its schedule fitted to them."""
    runtime = replace(base.runtime, out_dir=out_dir, max_iters=iters, eval_interval=iters, always_save_checkpoint=False)
    schedule = replace(base.schedule, warmup_iters=min(base.schedule.warmup_iters, iters // 10), lr_decay_iters=iters)
    return replace(base, runtime=runtime, schedule=schedule)


def measure(ctx: BenchContext, corpus: Path, name: str, choice: TokenizerChoice, config: Path) -> Row:
    folder = ctx.work_dir / "case10" / name.replace(" ", "_")
    started = time.perf_counter()
    meta = prepare_corpus(corpus, folder / "dataset", tokenizer=choice, val_fraction=0.1)
    prepare_seconds = time.perf_counter() - started
    tokens = (meta.train_tokens or 0) + (meta.val_tokens or 0)
    base = shipped_config(ctx, config, folder / "calibration", dataset_dir=folder / "dataset")
    if ctx.tiny:
        iters = base.runtime.max_iters
    else:
        _, per_step = timed_steps(run_config(base, folder / "calibration", CALIBRATION_ITERS))
        iters = max(CALIBRATION_ITERS, int(BUDGET_S / per_step))
    result, per_step = timed_steps(run_config(base, folder / "run", iters))
    evaluation = result.last_eval or {}
    metrics = TokenizerRun(
        corpus=str(corpus),
        vocab_size=meta.vocab_size,
        bytes_per_token=corpus.stat().st_size / tokens,
        prepare_seconds=prepare_seconds,
        iters=iters,
        train_seconds=per_step * iters,
        val_loss=evaluation.get("val", float("nan")),
        val_bpb=evaluation.get("val_bpb", float("nan")),
    )
    summary = (
        f"vocab {meta.vocab_size}: {metrics.bytes_per_token:.2f} bytes/token; val {metrics.val_bpb:.3f} bits/byte "
        f"(loss {metrics.val_loss:.3f}) after {iters} iters in {metrics.train_seconds:.0f} s"
    )
    return Row(case=CASE, variant=name, summary=summary, metrics=metrics)


def variants(ctx: BenchContext) -> list[tuple[str, TokenizerChoice]]:
    bpe = [
        (f"trained BPE {size}", TokenizerChoice(kind="bpe", vocab_size=size))
        for size in (TINY_BPE_SIZES if ctx.tiny else BPE_SIZES)
    ]
    return [
        ("char", TokenizerChoice(kind="char")),
        ("tiktoken cl100k_base", TokenizerChoice(kind="tiktoken", encoding="cl100k_base")),
        *bpe,
    ]


def case10_tokenizers(ctx: BenchContext, config: Path) -> list[Row]:
    corpus = corpus_for(ctx)
    return [measure(ctx, corpus, name, choice, config) for name, choice in variants(ctx)]
