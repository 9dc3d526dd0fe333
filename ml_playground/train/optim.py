"""AdamW with weight decay on matrices/embeddings (>= 2-D) only; fused/foreach where supported."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ml_playground.config import OptimConfig

# Devices with a fused AdamW kernel in the installed torch.
_FUSED_DEVICES = ("cuda", "cpu", "mps")


def parameter_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict[str, object]]:
    """Two groups: decayed (>= 2-D: weights, embeddings) and not decayed (biases, norms)."""
    trainable = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    groups = parameter_groups(params, cfg.weight_decay)
    fused = device_type in _FUSED_DEVICES
    return torch.optim.AdamW(
        groups,
        lr=cfg.learning_rate,
        betas=(cfg.beta1, cfg.beta2),
        fused=fused,
        foreach=None if fused else True,
    )
