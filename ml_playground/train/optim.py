"""The optimizer of [train.optim]: AdamW (weight decay on >= 2-D parameters only, fused/foreach
where supported), or Muon on the hidden matrices with AdamW on the rest (`MuonAdamW`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ml_playground.config import OptimConfig
from ml_playground.model import GPT

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


def _muon_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning rate: "original" scales by sqrt(max(1, rows / cols)),
    "match_rms_adamw" by 0.2 * sqrt(max(rows, cols)) (the update's RMS then matches AdamW's)."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


def newton_schulz(
    updates: Sequence[Tensor], coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> list[Tensor]:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation of each matrix (each scaled to unit
    Frobenius norm, iterated on its wide orientation), computed in `dtype` and batched: matrices of one
    shape go through `steps` batched matmuls together. Results come back in the input's order and dtype."""
    a, b, c = coefficients
    results: dict[int, Tensor] = {}
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, update in enumerate(updates):
        rows, cols = update.shape
        by_shape.setdefault((min(rows, cols), max(rows, cols)), []).append(index)
    for indices in by_shape.values():
        x = torch.stack([updates[i] if updates[i].size(0) <= updates[i].size(1) else updates[i].T for i in indices])
        x = x.to(dtype)
        x = x / x.square().sum(dim=(1, 2), keepdim=True).sqrt().clamp(min=eps)  # each matrix's Frobenius norm
        for _ in range(steps):
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        for i, result in zip(indices, x, strict=True):
            wide = updates[i].size(0) <= updates[i].size(1)
            results[i] = (result if wide else result.T).to(updates[i].dtype)
    return [results[i] for i in range(len(updates))]


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon with its hyper-parameters, state (`momentum_buffer`) and state dict, and the
    same update, with the orthogonalisation batched over matrices of one shape and run in float32
    off CUDA. torch's runs Newton-Schulz in bfloat16 one matrix at a time: on CPUs without bf16
    matmul units (AVX2) that costs ~25x float32, several times the whole forward and backward
    (DEVELOPMENT.md). On CUDA it stays bfloat16, as torch's."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]  # closure-free
        if closure is not None:
            raise ValueError("BatchedMuon.step takes no closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            updates: list[Tensor] = []
            for p in params:
                grad = p.grad
                assert grad is not None
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf: Tensor = state["momentum_buffer"]
                buf.lerp_(grad, 1 - group["momentum"])
                updates.append(grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf)
            if not params:
                continue
            dtype = torch.bfloat16 if params[0].device.type == "cuda" else torch.float32
            orthogonal = newton_schulz(updates, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
            for p, update in zip(params, orthogonal, strict=True):
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-_muon_lr(group["lr"], group["adjust_lr_fn"], p.shape))
        return None


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


def block_matrices(model: GPT) -> list[nn.Parameter]:
    """The trainable 2-D weights of the Linear modules inside the transformer blocks (attention and
    MLP matrices): what `optimizer = "muon"` gives to Muon. Chosen by module structure, not name."""
    return [
        weight
        for block in model.blocks
        for module in block.modules()
        if isinstance(module, nn.Linear) and isinstance(weight := module.weight, nn.Parameter) and weight.requires_grad
    ]


def build_optimizer(
    params: Iterable[nn.Parameter],
    cfg: OptimConfig,
    device_type: str,
    hidden_matrices: Sequence[nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """AdamW over `params`; with `cfg.optimizer == "muon"`, Muon over the trainable
    `hidden_matrices` (a subset of `params`, each 2-D, e.g. `block_matrices`) and AdamW over the
    other `params`."""
    if cfg.optimizer == "adamw":
        return _adamw(params, cfg, device_type)
    muon_ids = {id(p) for p in hidden_matrices if p.requires_grad}
    trainable = [p for p in params if p.requires_grad]
    muon_params = [p for p in trainable if id(p) in muon_ids]
    if len(muon_params) != len(muon_ids):
        raise ValueError("hidden_matrices must be among the optimized parameters")
    if not muon_params:
        raise ValueError('train.optim.optimizer = "muon": the model has no trainable hidden matrices')
    muon = BatchedMuon(
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
