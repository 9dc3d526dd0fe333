"""GPT-2 module graph (nanoGPT parameter names), with an optional KV cache for generation.

Only the network lives here: optimizer setup, generation loops and checkpoint I/O are elsewhere.
Parameter names match nanoGPT (`transformer.wte`, `transformer.h.0.attn.c_attn`, ...) so nanoGPT
checkpoints load directly and Hugging Face / GGUF exports are a key map with transposes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True, slots=True, kw_only=True)
class GPTConfig:
    """The architecture; stored in checkpoints as `model_args` (nanoGPT's keys, `real_vocab_size` aside)."""

    block_size: int
    # Rows of the token embedding and the output head (possibly padded past the tokenizer's ids).
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False
    # The tokenizer's ids are 0..real_vocab_size-1 when the rows are padded past them (None: every
    # row is a token). Not in `model_args`: checkpoints take it from their dataset metadata.
    real_vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.real_vocab_size is not None and not 0 < self.real_vocab_size <= self.vocab_size:
            raise ValueError(f"real_vocab_size {self.real_vocab_size} must be in [1, vocab_size={self.vocab_size}]")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def real_vocab(self) -> int:
        """How many rows are tokens (the tokenizer's vocabulary)."""
        return self.vocab_size if self.real_vocab_size is None else self.real_vocab_size

    def with_real_vocab(self, size: int) -> GPTConfig:
        """This architecture whose first `size` rows are tokens (`size` <= vocab_size)."""
        return replace(self, real_vocab_size=size if size < self.vocab_size else None)


M = TypeVar("M", bound=nn.Module)


def _typed(module: nn.Module, kind: type[M]) -> M:
    """Narrow a ModuleDict entry to its class (ModuleDict is typed as holding plain Modules)."""
    if not isinstance(module, kind):
        raise TypeError(f"expected {kind.__name__}, found {type(module).__name__}")
    return module


class ModelOutput(NamedTuple):
    logits: Tensor  # (B, T, vocab_size) or (B, 1, vocab_size) when last_only; padding columns -inf
    loss: Tensor | None


class LayerKV:
    """Preallocated keys/values of one layer: (B, nh, max_len, hs) each."""

    def __init__(self, batch: int, config: GPTConfig, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (batch, config.n_head, max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new (B, nh, T, hs) keys/values at `start`; return all keys/values so far."""
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """One `LayerKV` per block; `length` tokens are cached."""

    def __init__(self, batch: int, config: GPTConfig, device: torch.device, dtype: torch.dtype):
        self.layers = [LayerKV(batch, config, config.block_size, device, dtype) for _ in range(config.n_layer)]
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, kv: LayerKV | None = None, start: int = 0) -> Tensor:
        B, T, C = x.size()
        # (B, T, 3C) -> 3 x (B, T, nh, hs) -> (B, nh, T, hs)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if kv is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:
            k, v = kv.update(start, k, v)  # (B, nh, start+T, hs)
            if T == 1:
                y = F.scaled_dot_product_attention(q, k, v)  # the new token sees every cached one
            elif start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # prefill of an empty cache
            else:
                # Query i sits at absolute position start+i and may see keys 0..start+i.
                rows = torch.arange(start, start + T, device=x.device).unsqueeze(1)
                cols = torch.arange(start + T, device=x.device).unsqueeze(0)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=cols <= rows)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        out: Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, kv: LayerKV | None = None, start: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), kv, start)
        out: Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.block_size, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                "ln_f": nn.LayerNorm(config.n_embd, bias=config.bias),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (GPT-2)
        self.apply(self._init_weights)
        # Scaled init of residual projections (GPT-2 paper).
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @property
    def wte(self) -> nn.Embedding:
        return _typed(self.transformer["wte"], nn.Embedding)

    @property
    def wpe(self) -> nn.Embedding:
        return _typed(self.transformer["wpe"], nn.Embedding)

    @property
    def blocks(self) -> list[Block]:
        return [_typed(block, Block) for block in _typed(self.transformer["h"], nn.ModuleList)]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            biases = [p for name, p in module.named_parameters(recurse=False) if name == "bias"]
            for bias in biases:  # absent when bias=False
                nn.init.zeros_(bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default (the tied wte counts once)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.wpe.weight.numel()
        return total

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> ModelOutput:
        """idx (B, T) token ids. With `cache`, idx continues the cached sequence and is appended."""
        _, T = idx.size()
        start = 0 if cache is None else cache.length
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer["drop"](self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i], start)
        if cache is not None:
            cache.length = start + T
        x = self.transformer["ln_f"](x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)  # (B, T, vocab_size): the full, padded width keeps the matmul fast
        real = self.config.real_vocab_size
        if real is not None:
            # Padding rows are not tokens: -inf is never sampled and drops out of the loss's softmax,
            # so they get no gradient. In place is safe: the head's backward does not read its output.
            logits[..., real:] = float("-inf")
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return ModelOutput(logits, loss)
