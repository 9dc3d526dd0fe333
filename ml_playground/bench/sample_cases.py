"""Case 4: sampling speed, with and without the KV cache, at block_size 64 and 1024."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import REFERENCE_SAMPLE_TOKENS_PER_S, nanogpt_generate
from ml_playground.bench.report import Row, Value
from ml_playground.bench.shapes import ModelShape
from ml_playground.bench.timing import time_calls
from ml_playground.generate import SamplingParams, generate
from ml_playground.model import GPT, GPTConfig

# sample.py's defaults in nanoGPT and ours.
PARAMS = SamplingParams(temperature=0.8, top_k=200)


def _model(ctx: BenchContext, shape: ModelShape) -> GPT:
    torch.manual_seed(1337)
    config = GPTConfig(
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        block_size=shape.block_size,
        vocab_size=ctx.char_meta.vocab_size,
    )
    return GPT(config).to(ctx.device).eval()


def _prompt(ctx: BenchContext) -> Tensor:
    """nanoGPT's default start "\\n" as one token, batch 1."""
    itos = ctx.char_meta.itos or []
    token = itos.index("\n") if "\n" in itos else 0
    return torch.tensor([[token]], dtype=torch.long, device=ctx.device)


def _ours(
    model: GPT,
    prompt: Tensor,
    samples: int,
    tokens: int,
    *,
    use_cache: bool = True,
    keep: int | None = None,
    batched: bool = True,
) -> Callable[[], object]:
    """`samples` generations of `tokens` tokens: one batch (as `sample` draws them) or one by one."""

    def run() -> None:
        if batched:
            generate(model, prompt.expand(samples, -1), tokens, PARAMS, use_cache=use_cache, keep=keep)
            return
        for _ in range(samples):
            generate(model, prompt, tokens, PARAMS, use_cache=use_cache, keep=keep)

    return run


def _rate_row(case: str, variant: str, seconds: float, tokens: int, baseline: float | None, source: str) -> Row:
    metrics: dict[str, Value] = {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens}
    summary = f"{tokens / seconds:9.0f} tok/s ({seconds:.2f} s for {tokens} tokens)"
    if baseline is not None:
        metrics |= {"vs_nanogpt": tokens / seconds / baseline, "nanogpt_baseline": source}
        summary += f"  {tokens / seconds / baseline:.1f}x nanoGPT ({source})"
    return Row(case=case, variant=variant, summary=summary, metrics=metrics)


def _latency_profile(model: GPT, prompt: Tensor, tokens: int) -> dict[str, Value]:
    """Per-token latency early vs late in one cached generation (flat = the cache works)."""
    stamps: list[float] = []
    generate(model, prompt, tokens, PARAMS, on_token=lambda _token: stamps.append(time.perf_counter()))
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    window = max(1, len(steps) // 10)
    early, late = statistics.median(steps[:window]), statistics.median(steps[-window:])
    return {
        "ms_per_token_first_10pct": early * 1000,
        "ms_per_token_last_10pct": late * 1000,
        "late_over_early": late / early,
    }


def case4_sampling(ctx: BenchContext) -> list[Row]:
    sizes = ctx.sizes
    reps = min(ctx.reps, 3)
    rows: list[Row] = []
    prompt = _prompt(ctx)

    small = _model(ctx, sizes.small)
    total = sizes.samples * sizes.sample_tokens
    case = f"4 sample {sizes.samples}x{sizes.sample_tokens} T{sizes.small.block_size}"
    block = sizes.small.block_size
    n, length = sizes.samples, sizes.sample_tokens
    variants: dict[str, Callable[[], object]] = {
        "batched, KV cache (nanoGPT's window)": _ours(small, prompt, n, length),
        f"batched, KV cache, context_keep={block // 2}": _ours(small, prompt, n, length, keep=block // 2),
        "one by one, KV cache (nanoGPT's window)": _ours(small, prompt, n, length, batched=False),
        "one by one, no cache (nanoGPT's algorithm)": _ours(small, prompt, n, length, use_cache=False, batched=False),
    }
    seconds = {name: time_calls(fn, warmup=1, reps=reps, device=ctx.device).median for name, fn in variants.items()}
    baseline, source = REFERENCE_SAMPLE_TOKENS_PER_S, "reference"
    if ctx.nanogpt is not None:
        theirs = ctx.nanogpt.build(sizes.small, ctx.char_meta.vocab_size, ctx.device).eval()

        def run_theirs() -> None:
            for _ in range(sizes.samples):
                nanogpt_generate(theirs, prompt, sizes.sample_tokens)

        measured = time_calls(run_theirs, warmup=1, reps=reps, device=ctx.device).median
        baseline, source = total / measured, "measured"
        rows.append(_rate_row(case, "nanoGPT sample.py (checkout)", measured, total, None, source))
    rows[0:0] = [_rate_row(case, name, s, total, baseline, source) for name, s in seconds.items()]

    long = _model(ctx, sizes.long)
    case = f"4 sample {sizes.long_tokens} T{sizes.long.block_size}"
    cached = time_calls(_ours(long, prompt, 1, sizes.long_tokens), warmup=1, reps=reps, device=ctx.device).median
    long_rows: list[Row] = []
    if ctx.nanogpt is not None:
        theirs_long = ctx.nanogpt.build(sizes.long, ctx.char_meta.vocab_size, ctx.device).eval()
        measured = time_calls(
            lambda: nanogpt_generate(theirs_long, prompt, sizes.long_tokens), warmup=0, reps=1, device=ctx.device
        ).median
        baseline_long, source_long = sizes.long_tokens / measured, "measured"
        long_rows.append(_rate_row(case, "nanoGPT sample.py (checkout)", measured, sizes.long_tokens, None, ""))
    else:  # our uncached path runs nanoGPT's algorithm (a full forward of the context per token)
        uncached = time_calls(
            _ours(long, prompt, 1, sizes.long_tokens, use_cache=False), warmup=0, reps=1, device=ctx.device
        ).median
        baseline_long, source_long = sizes.long_tokens / uncached, "our no-cache run"
        long_rows.append(_rate_row(case, "no cache (nanoGPT's algorithm)", uncached, sizes.long_tokens, None, ""))
    ours = _rate_row(case, "KV cache", cached, sizes.long_tokens, baseline_long, source_long)
    ours.metrics.update(_latency_profile(long, prompt, sizes.long_tokens))
    return [*rows, ours, *long_rows]
