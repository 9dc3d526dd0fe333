"""Case 4: sampling speed, with and without the KV cache, at block_size 64 and 1024.

Through the sampler's public functions, not `run_sampling` itself: each model is a checkpoint
written by `train` (zero steps: the initial weights), loaded with
`load_model_for_inference` as `make sample` loads it, and `generate` is called with the arguments
`run_sampling` passes (settings from `SampleSettings`' defaults via `sampling_params`, its
generator, cache dtype and autocast). `run_sampling` would also time loading the checkpoint,
printing and saving the samples, and it has no switch for the variants compared here (one sample
at a time, no cache) nor a per-token hook for the latency profile.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import REFERENCE_SAMPLE_TOKENS_PER_S, nanogpt_generate
from ml_playground.bench.report import Row, Sampling
from ml_playground.bench.runs import fresh_run, train_config
from ml_playground.bench.shapes import ModelShape
from ml_playground.bench.timing import time_calls
from ml_playground.config import SampleSettings
from ml_playground.generate import TokenCallback, generate
from ml_playground.model import GPT
from ml_playground.runtime import Runtime, resolve_runtime
from ml_playground.sample import encode_prompt, load_model_for_inference, read_prompt, sampling_params
from ml_playground.tokenizers import Tokenizer
from ml_playground.train.loop import train

# `make sample`'s defaults: nanoGPT's sample.py start ("\n"), temperature 0.8 and top_k 200.
SETTINGS = SampleSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class Sampler:
    """A checkpoint loaded as `make sample` loads it; `draw` generates as `run_sampling` does."""

    model: GPT
    tokenizer: Tokenizer
    runtime: Runtime
    prompt: Tensor  # (1, P): the default start, encoded
    seed: int

    def draw(
        self,
        samples: int,
        tokens: int,
        *,
        use_cache: bool = True,
        keep: int | None = None,
        on_token: TokenCallback | None = None,
    ) -> Tensor:
        return generate(
            self.model,
            self.prompt.expand(samples, -1),
            tokens,
            sampling_params(SETTINGS),
            generator=torch.Generator().manual_seed(self.seed),
            use_cache=use_cache,
            keep=keep,
            vocab_size=self.tokenizer.vocab_size,
            cache_dtype=self.runtime.torch_dtype,
            autocast=self.runtime.autocast,
            on_token=on_token,
        )


def _sampler(ctx: BenchContext, shape: ModelShape, name: str) -> Sampler:
    """A zero-step `train` of `shape` (its checkpoint holds the seeded initial weights), loaded back."""
    cfg = train_config(ctx, shape, batch_size=1)
    out_dir = ctx.work_dir / name
    train(fresh_run(cfg, out_dir, steps=0))
    runtime = resolve_runtime(ctx.device_name, "float32")
    model, tokenizer, _path = load_model_for_inference(out_dir, runtime)
    ids = encode_prompt(tokenizer, read_prompt(SETTINGS.start))
    prompt = torch.tensor([ids], dtype=torch.long, device=runtime.device)
    return Sampler(model=model, tokenizer=tokenizer, runtime=runtime, prompt=prompt, seed=cfg.runtime.seed)


def _ours(
    sampler: Sampler,
    samples: int,
    tokens: int,
    *,
    use_cache: bool = True,
    keep: int | None = None,
    batched: bool = True,
) -> Callable[[], object]:
    """`samples` generations of `tokens` tokens: one batch (as `run_sampling` draws them) or one by one."""

    def draw() -> None:
        if batched:
            sampler.draw(samples, tokens, use_cache=use_cache, keep=keep)
            return
        for _ in range(samples):
            sampler.draw(1, tokens, use_cache=use_cache, keep=keep)

    return draw


def _rate(seconds: float, tokens: int, baseline: float | None, source: str) -> tuple[Sampling, str]:
    """The metrics and the table cell of `tokens` tokens in `seconds`."""
    metrics = Sampling(tokens_per_s=tokens / seconds, seconds=seconds, tokens=tokens)
    summary = f"{tokens / seconds:9.0f} tok/s ({seconds:.2f} s for {tokens} tokens)"
    if baseline is not None:
        metrics = replace(metrics, vs_nanogpt=tokens / seconds / baseline, nanogpt_baseline=source)
        summary += f"  {tokens / seconds / baseline:.1f}x nanoGPT ({source})"
    return metrics, summary


def _rate_row(case: str, variant: str, seconds: float, tokens: int, baseline: float | None, source: str) -> Row:
    metrics, summary = _rate(seconds, tokens, baseline, source)
    return Row(case=case, variant=variant, summary=summary, metrics=metrics)


def _with_latency_profile(metrics: Sampling, sampler: Sampler, tokens: int) -> Sampling:
    """Per-token latency early vs late in one cached generation (flat = the cache works)."""
    stamps: list[float] = []
    sampler.draw(1, tokens, on_token=lambda _token: stamps.append(time.perf_counter()))
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    window = max(1, len(steps) // 10)
    early, late = statistics.median(steps[:window]), statistics.median(steps[-window:])
    return replace(
        metrics,
        ms_per_token_first_10pct=early * 1000,
        ms_per_token_last_10pct=late * 1000,
        late_over_early=late / early,
    )


def case4_sampling(ctx: BenchContext) -> list[Row]:
    sizes = ctx.sizes
    reps = min(ctx.reps, 3)
    rows: list[Row] = []

    small = _sampler(ctx, sizes.small, "case4-small")
    prompt = small.prompt
    total = sizes.samples * sizes.sample_tokens
    case = f"4 sample {sizes.samples}x{sizes.sample_tokens} T{sizes.small.block_size}"
    block = sizes.small.block_size
    n, length = sizes.samples, sizes.sample_tokens
    variants: dict[str, Callable[[], object]] = {
        "batched, KV cache (nanoGPT's window)": _ours(small, n, length),
        f"batched, KV cache, context_keep={block // 2}": _ours(small, n, length, keep=block // 2),
        "one by one, KV cache (nanoGPT's window)": _ours(small, n, length, batched=False),
        "one by one, no cache (nanoGPT's algorithm)": _ours(small, n, length, use_cache=False, batched=False),
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

    long = _sampler(ctx, sizes.long, "case4-long")
    case = f"4 sample {sizes.long_tokens} T{sizes.long.block_size}"
    cached = time_calls(_ours(long, 1, sizes.long_tokens), warmup=1, reps=reps, device=ctx.device).median
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
            _ours(long, 1, sizes.long_tokens, use_cache=False), warmup=0, reps=1, device=ctx.device
        ).median
        baseline_long, source_long = sizes.long_tokens / uncached, "our no-cache run"
        long_rows.append(_rate_row(case, "no cache (nanoGPT's algorithm)", uncached, sizes.long_tokens, None, ""))
    metrics, summary = _rate(cached, sizes.long_tokens, baseline_long, source_long)
    metrics = _with_latency_profile(metrics, long, sizes.long_tokens)
    return [*rows, Row(case=case, variant="KV cache", summary=summary, metrics=metrics), *long_rows]
