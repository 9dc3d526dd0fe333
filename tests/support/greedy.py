"""How close greedy tokens drawn another way (bf16 autocast, torch.compile) are to eager float32's picks."""

from __future__ import annotations

import torch
from torch import Tensor

from ml_playground.model import GPT


def float32_shortfalls(model: GPT, tokens: list[int], prompt_length: int) -> list[float]:
    """For each generated token: how far below the float32 maximum its float32 logit lies, given
    the block_size tokens before it (nanoGPT's window, no cache). 0 where float32 picks it too.

    bf16 moves a tiny model's logits by ~0.004, so its greedy picks stay within ~0.01 of the
    float32 maximum; a wrong pick lands a sizeable part of the logits' spread below it."""
    block_size = model.config.block_size
    shortfalls: list[float] = []
    with torch.no_grad():
        for i in range(prompt_length, len(tokens)):
            logits: Tensor = model(torch.tensor([tokens[max(0, i - block_size) : i]])).logits[0, -1]
            shortfalls.append(float(logits.max() - logits[tokens[i]]))
    return shortfalls
