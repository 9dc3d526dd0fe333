"""What the model computes for one token sequence: per-token loss, next-token top-k, attention, pooled state.

Pure functions over `GPT` (no LIT import), so the LIT wrapper stays a thin adapter and the numbers
are testable in the core environment. The attention module uses fused scaled-dot-product attention
and never materialises its weights; `attention_weights` recomputes them from each block's own
query/key projection, captured with forward hooks on an ordinary forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ml_playground.model import GPT, CausalSelfAttention


@dataclass(frozen=True, slots=True, kw_only=True)
class SequenceReport:
    """One forward pass over ids (T,), everything on the CPU in float32."""

    ids: list[int]
    # token_losses[i] = -log p(ids[i+1] | ids[:i+1]), shape (T-1,)
    token_losses: Tensor
    # Next-token distribution after each position over the tokenizer's ids (as the sampler draws
    # them): top_ids/top_probs (T, k), probabilities descending.
    top_ids: Tensor
    top_probs: Tensor
    # One (n_head, T, T) row-stochastic causal attention map per layer.
    attention: list[Tensor]
    # Mean of the final (post ln_f) hidden states, (n_embd,).
    pooled: Tensor

    @property
    def mean_loss(self) -> float:
        """Mean next-token loss; 0.0 for a single token (nothing to predict)."""
        return float(self.token_losses.mean()) if self.token_losses.numel() else 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_loss)


def attention_weights(attn: CausalSelfAttention, x: Tensor) -> Tensor:
    """Causal softmax(q k^T / sqrt(hs)) of `attn` for its input x (B, T, C) -> (B, nh, T, T)."""
    T = x.size(1)
    q, k, _ = attn.heads(x)  # (B, nh, T, hs), (B, nkv, T, hs): normed and rotated as in forward
    k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)  # each query head's key head
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


class _Capture:
    """Forward hooks that keep each attention module's input and the final hidden state."""

    def __init__(self, model: GPT):
        self.attn_inputs: list[Tensor] = []
        self.final_hidden: Tensor | None = None
        self._handles: list[RemovableHandle] = []
        for block in model.blocks:
            self._handles.append(block.attn.register_forward_hook(self._keep_attn_input))
        self._handles.append(model.transformer["ln_f"].register_forward_hook(self._keep_final))

    def _keep_attn_input(self, _module: nn.Module, args: tuple[Tensor, ...], _output: Tensor) -> None:
        self.attn_inputs.append(args[0])

    def _keep_final(self, _module: nn.Module, _args: tuple[Tensor, ...], output: Tensor) -> None:
        self.final_hidden = output

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def inspect_sequence(model: GPT, ids: list[int], top_k: int, vocab_size: int | None = None) -> SequenceReport:
    """Run `model` once over `ids` (1 <= len <= block_size) and collect the per-token views.

    `vocab_size` (the tokenizer's, when the model's vocabulary is padded past it) limits the
    next-token distribution to ids that decode; the losses use the full logits, as training does.
    """
    if not 1 <= len(ids) <= model.config.block_size:
        raise ValueError(f"need 1..{model.config.block_size} tokens, got {len(ids)}")
    device = model.wte.weight.device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    capture = _Capture(model)
    try:
        with torch.inference_mode():
            logits = model(idx).logits.float()[0]  # (T, vocab)
            attention = [
                attention_weights(block.attn, x)[0].float().cpu()
                for block, x in zip(model.blocks, capture.attn_inputs, strict=True)
            ]
    finally:
        capture.remove()
    if capture.final_hidden is None:
        raise RuntimeError("the final layer norm did not run")
    log_probs = F.log_softmax(logits, dim=-1)  # (T, vocab)
    targets = idx[0, 1:]
    token_losses = -log_probs[:-1].gather(1, targets.unsqueeze(1)).squeeze(1)  # (T-1,)
    next_probs = F.softmax(logits[:, :vocab_size], dim=-1)  # (T, vocab_size)
    top = torch.topk(next_probs, min(top_k, next_probs.size(-1)), dim=-1)  # sorted, descending
    return SequenceReport(
        ids=list(ids),
        token_losses=token_losses.cpu(),
        top_ids=top.indices.cpu(),
        top_probs=top.values.cpu(),
        attention=attention,
        pooled=capture.final_hidden[0].float().mean(dim=0).cpu(),
    )
