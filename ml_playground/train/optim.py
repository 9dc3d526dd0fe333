"""The optimizer of [train.optim]: AdamW (weight decay on >= 2-D parameters only, fused/foreach
where supported), or Muon on the hidden matrices with AdamW on the rest (`MuonAdamW`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

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


def _adamw(params: Iterable[nn.Parameter], cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    groups = parameter_groups(params, cfg.weight_decay)
    fused = device_type in _FUSED_DEVICES
    return torch.optim.AdamW(
        groups,
        lr=cfg.learning_rate,
        betas=(cfg.beta1, cfg.beta2),
        fused=fused,
        foreach=None if fused else True,
    )


class MuonAdamW(torch.optim.Optimizer):
    """Muon on `muon` (2-D hidden matrices), AdamW on `adamw` (the rest), as one optimizer for the
    loop and the grad scaler: `param_groups` are the two optimizers' own group dicts (AdamW's
    first), and `state_dict` is one ordinary optimizer state dict over those groups, parameters
    numbered AdamW's first."""

    def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Muon):
        # The base class only validates and records the parameters; the two parts own groups and state.
        super().__init__([p for part in (adamw, muon) for g in part.param_groups for p in g["params"]], {})
        self.adamw = adamw
        self.muon = muon
        self.param_groups = [*adamw.param_groups, *muon.param_groups]

    def set_learning_rates(self, adamw_lr: float, muon_lr: float) -> None:
        for group in self.adamw.param_groups:
            group["lr"] = adamw_lr
        for group in self.muon.param_groups:
            group["lr"] = muon_lr

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]  # closure-free parts
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        self.adamw.step()
        self.muon.step()  # type: ignore[no-untyped-call]  # torch.optim.Muon.step is unannotated
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none)
        self.muon.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        first = self.adamw.state_dict()
        second = self.muon.state_dict()
        offset = sum(len(g["params"]) for g in first["param_groups"])
        state = dict(first["state"])
        state.update({offset + index: value for index, value in second["state"].items()})
        shifted = [{**g, "params": [offset + i for i in g["params"]]} for g in second["param_groups"]]
        return {"state": state, "param_groups": [*first["param_groups"], *shifted]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups: list[dict[str, Any]] = state_dict["param_groups"]
        n_adamw = len(self.adamw.param_groups)
        if len(groups) != n_adamw + len(self.muon.param_groups):
            raise ValueError(
                f"optimizer state has {len(groups)} parameter groups; Muon with AdamW expects "
                f"{n_adamw + len(self.muon.param_groups)} (was it written with another train.optim.optimizer?)"
            )
        offset = sum(len(g["params"]) for g in groups[:n_adamw])
        state: dict[int, Any] = state_dict["state"]
        self.adamw.load_state_dict(
            {"state": {i: v for i, v in state.items() if i < offset}, "param_groups": groups[:n_adamw]}
        )
        self.muon.load_state_dict(
            {
                "state": {i - offset: v for i, v in state.items() if i >= offset},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in groups[n_adamw:]],
            }
        )
        # load_state_dict replaces each part's group dicts: share the new ones again.
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]


def build_optimizer(
    params: Iterable[nn.Parameter],
    cfg: OptimConfig,
    device_type: str,
    hidden_matrices: Sequence[nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """AdamW over `params`; with `cfg.optimizer == "muon"`, Muon over the trainable
    `hidden_matrices` (a subset of `params`, each 2-D) and AdamW over the other `params`."""
    if cfg.optimizer == "adamw":
        return _adamw(params, cfg, device_type)
    muon_ids = {id(p) for p in hidden_matrices if p.requires_grad}
    trainable = [p for p in params if p.requires_grad]
    muon_params = [p for p in trainable if id(p) in muon_ids]
    if len(muon_params) != len(muon_ids):
        raise ValueError("hidden_matrices must be among the optimized parameters")
    if not muon_params:
        raise ValueError('train.optim.optimizer = "muon": the model has no trainable hidden matrices')
    muon = torch.optim.Muon(
        muon_params,
        lr=cfg.muon_learning_rate,
        weight_decay=cfg.muon_weight_decay,
        momentum=cfg.muon_momentum,
        nesterov=cfg.muon_nesterov,
        ns_steps=cfg.muon_ns_steps,
        adjust_lr_fn=cfg.muon_adjust_lr,
    )
    return MuonAdamW(_adamw([p for p in trainable if id(p) not in muon_ids], cfg, device_type), muon)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float, cfg: OptimConfig) -> None:
    """`lr` is the schedule's AdamW rate at this step; Muon's follows the same schedule scaled by
    muon_learning_rate / learning_rate (both warm up and decay together)."""
    if isinstance(optimizer, MuonAdamW):
        optimizer.set_learning_rates(lr, lr * (cfg.muon_learning_rate / cfg.learning_rate))
        return
    for group in optimizer.param_groups:
        group["lr"] = lr
