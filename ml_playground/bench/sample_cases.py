"""Case 4: sampling speed, with and without the KV cache, at block_size 64 and 1024.

Not through `run_sampling` itself, which would also time loading, printing and saving the samples
and has no switch for the variants compared here (one sample at a time, no cache) nor a per-token
hook: each model is loaded as `make sample` loads it, and `generate` called as `run_sampling` calls it.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ml_playground.bench.context import BenchContext, ModelShape
from ml_playground.bench.nanogpt import REFERENCE_SAMPLE_TOKENS_PER_S, nanogpt_generate
from ml_playground.bench.report import Row, Sampling
from ml_playground.bench.timing import time_calls
from ml_playground.bench.train_cases import fresh_run, train_config
from ml_playground.config import SampleSettings
from ml_playground.generate import TokenCallback, generate
from ml_playground.model import GPT
from ml_playground.runtime import Runtime, resolve_runtime
from ml_playground.sample import encode_prompt, load_model_for_inference, read_prompt, sampling_params
from ml_playground.tokenizers import Tokenizer
from ml_playground.train.loop import train

# `make sample`'s defaults: nanoGPT's sample.py start ("\n"), temperature 0.8 and top_k 200.
SETTINGS = SampleSettings()
NANOGPT_VARIANT = "nanoGPT sample.py (checkout)"


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


def _sampling(seconds: float, tokens: int, against: tuple[float, str] | None = None) -> Sampling:
    """`tokens` tokens in `seconds`, against (nanoGPT's tokens/s, where that number comes from)."""
    metrics = Sampling(tokens_per_s=tokens / seconds, seconds=seconds, tokens=tokens)
    if against is None:
        return metrics
    return replace(metrics, vs_nanogpt=metrics.tokens_per_s / against[0], nanogpt_baseline=against[1])


def _row(case: str, variant: str, metrics: Sampling) -> Row:
    summary = f"{metrics.tokens_per_s:9.0f} tok/s ({metrics.seconds:.2f} s for {metrics.tokens} tokens)"
    if metrics.vs_nanogpt is not None:
        summary += f"  {metrics.vs_nanogpt:.1f}x nanoGPT ({metrics.nanogpt_baseline})"
    return Row(case=case, variant=variant, summary=summary, metrics=metrics)


def _latency_profile(sampler: Sampler, tokens: int) -> tuple[float, float]:
    """Median seconds per token in the first and last 10% of one cached generation (flat: the cache works)."""
    stamps: list[float] = []
    sampler.draw(1, tokens, on_token=lambda _token: stamps.append(time.perf_counter()))
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    window = max(1, len(steps) // 10)
    return statistics.median(steps[:window]), statistics.median(steps[-window:])


def case4_sampling(ctx: BenchContext) -> list[Row]:
    sizes, reps = ctx.sizes, min(ctx.reps, 3)

    def seconds(fn: Callable[[], object], *, warmup: int = 1, timed: int = reps) -> float:
        return statistics.median(time_calls(fn, warmup=warmup, reps=timed, device=ctx.device))

    small = _sampler(ctx, sizes.small, "case4-small")
    n, length, keep = sizes.samples, sizes.sample_tokens, sizes.small.block_size // 2
    total, case = n * length, f"4 sample {n}x{length} T{sizes.small.block_size}"

    def one_by_one(use_cache: bool) -> Callable[[], object]:
        return lambda: [small.draw(1, length, use_cache=use_cache) for _ in range(n)]

    ours = {
        "batched, KV cache (nanoGPT's window)": seconds(lambda: small.draw(n, length)),
        f"batched, KV cache, context_keep={keep}": seconds(lambda: small.draw(n, length, keep=keep)),
        "one by one, KV cache (nanoGPT's window)": seconds(one_by_one(True)),
        "one by one, no cache (nanoGPT's algorithm)": seconds(one_by_one(False)),
    }
    theirs: list[Row] = []
    against = REFERENCE_SAMPLE_TOKENS_PER_S, "reference"
    if ctx.nanogpt is not None:
        model = ctx.nanogpt.build(small.model.config, ctx.char_meta.vocab_size, ctx.device).eval()
        measured = seconds(lambda: [nanogpt_generate(model, small.prompt, length) for _ in range(n)])
        against = total / measured, "measured"
        theirs.append(_row(case, NANOGPT_VARIANT, _sampling(measured, total)))
    rows = [*(_row(case, name, _sampling(s, total, against)) for name, s in ours.items()), *theirs]

    long, tokens = _sampler(ctx, sizes.long, "case4-long"), sizes.long_tokens
    case = f"4 sample {tokens} T{sizes.long.block_size}"
    cached = seconds(lambda: long.draw(1, tokens))
    if ctx.nanogpt is not None:
        model = ctx.nanogpt.build(long.model.config, ctx.char_meta.vocab_size, ctx.device).eval()
        variant, source = NANOGPT_VARIANT, "measured"
        measured = seconds(lambda: nanogpt_generate(model, small.prompt, tokens), warmup=0, timed=1)
    else:  # our uncached path runs nanoGPT's algorithm (a full forward of the context per token)
        variant, source = "no cache (nanoGPT's algorithm)", "our no-cache run"
        measured = seconds(lambda: long.draw(1, tokens, use_cache=False), warmup=0, timed=1)
    early, late = _latency_profile(long, tokens)
    kv = replace(_sampling(cached, tokens, (tokens / measured, source)), late_over_early=late / early)
    kv = replace(kv, ms_per_token_first_10pct=early * 1000, ms_per_token_last_10pct=late * 1000)
    return [*rows, _row(case, "KV cache", kv), _row(case, variant, _sampling(measured, tokens))]
