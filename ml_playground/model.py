"""The GPT module graph (nanoGPT parameter names), with an optional KV cache for generation.

Only the network lives here: optimizer setup, generation loops and checkpoint I/O are elsewhere.
The defaults are GPT-2's block (learned positions, LayerNorm, GELU MLP, tied head);
`config.GPTConfig` (also [train.model]'s schema) switches on the newer parts one by one: rotary
positions (with Llama 3's frequency scaling), RMSNorm, SwiGLU or ReLU² MLPs, QK-norm, grouped-query
attention, heads of any width, biases on q/k/v only, an untied head and logit soft-capping.
Parameter names match nanoGPT (`transformer.wte`, `transformer.h.0.attn.c_attn`, ...) so nanoGPT
checkpoints load directly and Hugging Face / GGUF exports are key maps with transposes.
"""

from __future__ import annotations

import math
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml_playground.config import GPTConfig

M = TypeVar("M", bound=nn.Module)


def _typed(module: nn.Module, kind: type[M]) -> M:
    """Narrow a ModuleDict entry to its class (ModuleDict is typed as holding plain Modules)."""
    if not isinstance(module, kind):
        raise TypeError(f"expected {kind.__name__}, found {type(module).__name__}")
    return module


def norm_layer(config: GPTConfig, width: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=config.norm_eps)
    return nn.LayerNorm(width, eps=config.norm_eps, bias=config.bias)


class ModelOutput(NamedTuple):
    logits: Tensor  # (B, T, vocab_size) or (B, 1, vocab_size) when last_only; padding columns -inf
    loss: Tensor | None


class LayerKV:
    """Preallocated keys/values of one layer: (B, n_kv_head, max_len, hs) each."""

    def __init__(self, batch: int, config: GPTConfig, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (batch, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new (B, nkv, T, hs) keys/values at `start`; return all keys/values so far."""
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """One `LayerKV` per block, room for `capacity` tokens (default and at most block_size: a
    sampler sizes it to prompt + new tokens); `length` tokens are cached."""

    def __init__(
        self, batch: int, config: GPTConfig, device: torch.device, dtype: torch.dtype, capacity: int | None = None
    ):
        self.capacity = config.block_size if capacity is None else capacity
        if not 1 <= self.capacity <= config.block_size:
            raise ValueError(f"KV cache capacity must be in [1, block_size={config.block_size}], got {self.capacity}")
        self.layers = [LayerKV(batch, config, self.capacity, device, dtype) for _ in range(config.n_layer)]
        self.length = 0


def rope_frequencies(config: GPTConfig) -> Tensor:
    """(head_dim / 2,) angular frequencies of the rotation: rope_theta ** (-2i / head_dim), rescaled
    by Llama 3's rule when `rope_scaling` is set (long wavelengths divided by `factor`, short ones
    kept, a smooth blend between; Hugging Face's `_compute_llama3_parameters`)."""
    hs = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    context = scaling.original_max_position_embeddings
    wavelength = 2 * math.pi / inv_freq
    long = wavelength > context / scaling.low_freq_factor
    short = wavelength < context / scaling.high_freq_factor
    # 0 at the long-wavelength end of the blend, 1 at the short one.
    smooth = (context / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    return torch.where(long, inv_freq / scaling.factor, torch.where(short, inv_freq, blended))


class Rotary(nn.Module):
    """Rotary position embedding in Hugging Face Llama's layout (the two halves of each head
    rotate together), so exported weights need no permutation. A GPT builds one and shares it
    between its layers: the (block_size, head_dim) tables exist once per model, not per layer."""

    cos: Tensor
    sin: Tensor

    def __init__(self, config: GPTConfig):
        super().__init__()
        angles = torch.outer(
            torch.arange(config.block_size, dtype=torch.float32), rope_frequencies(config)
        )  # (T, hs/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, hs)
        # Not saved: derived from the config (and absent from nanoGPT-style state dicts).
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, start: int) -> Tensor:
        """Rotate (B, h, T, hs) queries or keys sitting at positions start..start+T-1."""
        T = x.size(2)
        cos = self.cos[start : start + T].to(x.dtype)
        sin = self.sin[start : start + T].to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-second, first), dim=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, rotary: Rotary | None = None):
        """`rotary`: the model's shared rotation (rope positions); a lone layer builds its own."""
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        # One projection for q (n_head heads), k and v (n_kv_head heads each), in that order; the
        # attention is n_head x head_dim wide, which need not be n_embd.
        self.c_attn = nn.Linear(
            config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_dim, bias=config.bias or config.qkv_bias
        )
        self.c_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm as Qwen3: RMSNorm over each head's dims, before the rotation.
        self.q_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None
        if config.position == "rope" and rotary is None:
            rotary = Rotary(config)
        self.rotary = rotary if config.position == "rope" else None

    def heads(self, x: Tensor, start: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (B, nh, T, hs), keys and values (B, nkv, T, hs) of x (B, T, C) at positions
        start..start+T-1, normed and rotated as the options say."""
        B, T, _ = x.size()
        hs = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hs, self.n_kv_head * hs, self.n_kv_head * hs], dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, T, nh*hs) -> (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        return q, k, v

    def forward(self, x: Tensor, kv: LayerKV | None = None, start: int = 0) -> Tensor:
        B, T, _ = x.size()
        q, k, v = self.heads(x, start)
        # Grouped-query attention: each key/value head serves n_head / n_kv_head query heads.
        gqa = self.n_kv_head != self.n_head
        if kv is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True, enable_gqa=gqa
            )
        else:
            k, v = kv.update(start, k, v)  # (B, nkv, start+T, hs)
            if T == 1:
                y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)  # the new token sees every cached one
            elif start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # empty-cache prefill
            else:
                # Query i sits at absolute position start+i and may see keys 0..start+i.
                rows = torch.arange(start, start + T, device=x.device).unsqueeze(1)
                cols = torch.arange(start + T, device=x.device).unsqueeze(0)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=cols <= rows, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)  # (B, nh, T, hs) -> (B, T, nh*hs)
        out: Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLP(nn.Module):
    """gelu: GPT-2's MLP; relu2: relu(x)^2 in its place; swiglu: silu(gate) * up, with gate and up
    as the two halves of one projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        hidden = config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if config.mlp == "swiglu" else hidden, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)  # (B, T, C) -> (B, T, H), or (B, T, 2H) for swiglu
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = self.gelu(h)
        out: Tensor = self.dropout(self.c_proj(h))
        return out


class Block(nn.Module):
    def __init__(self, config: GPTConfig, rotary: Rotary | None = None):
        super().__init__()
        self.ln_1 = norm_layer(config, config.n_embd)
        self.attn = CausalSelfAttention(config, rotary)
        self.ln_2 = norm_layer(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, kv: LayerKV | None = None, start: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), kv, start)
        out: Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules: dict[str, nn.Module] = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if config.position == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        # One rotation for all layers: its buffers are not saved, so state dicts are unchanged.
        rotary = Rotary(config) if config.position == "rope" else None
        modules |= {
            "drop": nn.Dropout(config.dropout),
            "h": nn.ModuleList([Block(config, rotary) for _ in range(config.n_layer)]),
            "ln_f": norm_layer(config, config.n_embd),
        }
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
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
    def wpe(self) -> nn.Embedding | None:
        """Learned position embeddings (None with rotary positions)."""
        return _typed(self.transformer["wpe"], nn.Embedding) if "wpe" in self.transformer else None

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
        """Parameter count; position embeddings excluded by default (a tied wte counts once)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
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
        if cache is not None and start + T > cache.capacity:
            raise ValueError(f"sequence length {start + T} exceeds the KV cache's capacity {cache.capacity}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, dtype=torch.long, device=idx.device))
        x = self.transformer["drop"](x)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i], start)
        if cache is not None:
            cache.length = start + T
        x = self.transformer["ln_f"](x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)  # (B, T, vocab_size): the full, padded width keeps the matmul fast
        cap = self.config.logit_softcap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        real = self.config.real_vocab_size
        if real < self.config.vocab_size:
            # Padding rows are not tokens: -inf is never sampled and drops out of the loss's softmax,
            # so they get no gradient. In place is safe: the head's backward does not read its output
            # (and tanh's backward reads its own output, a different tensor).
            logits[..., real:] = float("-inf")
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return ModelOutput(logits, loss)
