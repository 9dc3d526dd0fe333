"""Generation as a pipeline of small pure functions over `GPT` and its `KVCache`.

logits -> temperature / top-k / top-p -> probabilities -> next token (argmax when greedy)
-> decode loop. The loop prefills the context in one forward, then feeds one token per step
through the cache, so N new tokens cost N one-token forwards instead of N full-context ones.
The cache holds prompt + new tokens (at most `block_size`), not a whole block of a long-context
model: 2 x n_layer x n_kv_head x head_dim x that length x the dtype's bytes, per sequence.

Contexts longer than `block_size`: once the sequence no longer fits, the context is cropped
to its last `keep` tokens and the cache is rebuilt from them. `keep = block_size` is nanoGPT's
sliding window (every token sees a full block, at the price of one full forward per token past
`block_size`, run without the cache since it would be rebuilt at the next token anyway); a smaller
`keep` rebuilds only every `block_size - keep + 1` tokens. The uncached path (`use_cache=False`)
follows the same windows, so both give the same tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ml_playground.model import GPT, KVCache
from ml_playground.runtime import memory_for

# Called after each step with the new token ids, shape (B,).
TokenCallback = Callable[[Tensor], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """How the next token is drawn. `temperature == 0` means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the `k` largest logits of each row (ties at the k-th value kept); the rest -> -inf."""
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sum reaches `p`."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Probability mass strictly before each token; the most likely token (mass 0) always stays.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def logits_to_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """(B, vocab) logits -> (B, vocab) probabilities after temperature, top-k and top-p."""
    if params.greedy:
        raise ValueError("greedy decoding has no distribution; use next_token")
    scaled = logits.float() / params.temperature
    if params.top_k is not None:
        scaled = top_k_filter(scaled, params.top_k)
    if params.top_p is not None:
        scaled = top_p_filter(scaled, params.top_p)
    return torch.softmax(scaled, dim=-1)


def next_token(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> Tensor:
    """(B, vocab) logits -> (B,) token ids. Draws on the generator's device (CPU by default)."""
    if params.greedy:
        return torch.argmax(logits, dim=-1)
    device = torch.device("cpu") if generator is None else generator.device
    probs = logits_to_probs(logits.to(device), params)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1).to(logits.device)


def window_start(length: int, start: int, block_size: int, keep: int) -> int:
    """Where the model's context begins in a sequence of `length` tokens.

    The context `[start, length)` is kept while it fits in `block_size`; when it does not, it is
    cropped to the last `keep` tokens.
    """
    if length - start <= block_size:
        return start
    return length - keep


def _last_logits(model: GPT, idx: Tensor, cache: KVCache | None) -> Tensor:
    """(B, T) ids -> (B, vocab) logits of the last position."""
    logits: Tensor = model(idx, cache=cache, last_only=True).logits
    return logits[:, -1, :]


def generate(
    model: GPT,
    prompt: Tensor,
    max_new_tokens: int,
    params: SamplingParams,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    keep: int | None = None,
    vocab_size: int | None = None,
    cache_dtype: torch.dtype | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    on_token: TokenCallback | None = None,
) -> Tensor:
    """Extend `prompt` (B, T) by `max_new_tokens`; returns (B, T + max_new_tokens) token ids.

    `keep` (default `block_size`) is how many tokens survive a crop once the sequence outgrows
    the model's block. `vocab_size` limits draws to the tokenizer's ids when the model's
    vocabulary is padded (nanoGPT pads GPT-2's 50257 to 50304); a model whose config knows its
    `real_vocab_size` already gives the padding -inf logits. `cache_dtype` is the dtype
    keys/values have inside `autocast`.
    """
    block_size = model.config.block_size
    keep = block_size if keep is None else keep
    if not 1 <= keep <= block_size:
        raise ValueError(f"keep must be in [1, block_size={block_size}], got {keep}")
    if prompt.dim() != 2 or prompt.size(1) == 0:
        raise ValueError(f"prompt must be a non-empty (B, T) tensor, got shape {tuple(prompt.shape)}")
    batch = prompt.size(0)
    tokens = torch.empty((batch, prompt.size(1) + max_new_tokens), dtype=torch.long, device=prompt.device)
    tokens[:, : prompt.size(1)] = prompt
    length = prompt.size(1)
    cache: KVCache | None = None
    if use_cache:
        dtype = cache_dtype if cache_dtype is not None else model.wte.weight.dtype
        config = model.config
        # Room for the whole sequence, or for one block when the window will slide.
        capacity = min(block_size, tokens.size(1))
        heads = f"{config.n_layer} layers x 2 x {config.n_kv_head} heads"
        shape = f"{batch} x {heads} x {capacity} x {config.head_dim}, {dtype}"
        with memory_for(f"the KV cache ({shape})", prompt.device):
            cache = KVCache(batch, config, prompt.device, dtype, capacity)
    start = -1  # no context yet: the first step fills it
    with torch.inference_mode(), autocast():
        for _ in range(max_new_tokens):
            new_start = window_start(length, max(start, 0), block_size, keep)
            # A full window slides again on the next token, so a cache built from it would be
            # thrown away unused: one plain forward is cheaper (nanoGPT's window, keep == block).
            full_window = length - new_start == block_size
            if cache is None or (new_start != start and full_window):
                logits = _last_logits(model, tokens[:, new_start:length], None)
            elif new_start != start:
                cache.length = 0  # (re)build the cache from the cropped context in one forward
                logits = _last_logits(model, tokens[:, new_start:length], cache)
            else:
                logits = _last_logits(model, tokens[:, length - 1 : length], cache)
            start = new_start
            if vocab_size is not None:
                logits = logits[:, :vocab_size]
            token = next_token(logits, params, generator)  # (B,)
            tokens[:, length] = token
            length += 1
            if on_token is not None:
                on_token(token)
    return tokens
