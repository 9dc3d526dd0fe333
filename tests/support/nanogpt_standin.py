"""A stand-in for a karpathy/nanoGPT checkout's model.py, for tests of `make bench --nanogpt-dir`.

It has the interface the bench uses (GPTConfig, GPT returning (logits, loss), configure_optimizers,
generate) on top of ml-playground's own model, so the side-by-side code paths run in tests without
any of nanoGPT's code in this repository. Tests copy this file to `<dir>/model.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ml_playground import config as playground_config
from ml_playground import model as playground


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.inner = playground.GPT(playground_config.GPTConfig(**asdict(config)))

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        out = self.inner(idx, targets)
        return out.logits, out.loss

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        del device_type  # nanoGPT uses it to pick the fused kernel on CUDA
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size :])
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            idx = torch.cat((idx, torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)), dim=1)
        return idx
