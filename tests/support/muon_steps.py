"""`BatchedMuon` against `torch.optim.Muon`: both step the same matrices with the same gradients;
the momentum must agree exactly and the weights to bfloat16 rounding (torch orthogonalises in
bfloat16 everywhere, ours in float32 off CUDA)."""

from __future__ import annotations

import torch
from torch import nn

from ml_playground.train.optim import BatchedMuon


def step_both(shapes: list[tuple[int, int]], device: str, steps: int = 3) -> tuple[torch.optim.Muon, BatchedMuon]:
    """Both optimizers after `steps` steps from the same weights and gradients, checked as above."""
    torch.manual_seed(0)
    start = [torch.randn(shape, device=device) for shape in shapes]
    theirs_params = [nn.Parameter(t.clone()) for t in start]
    ours_params = [nn.Parameter(t.clone()) for t in start]
    theirs = torch.optim.Muon(theirs_params, lr=0.05, weight_decay=0.01, momentum=0.9)
    ours = BatchedMuon(ours_params, lr=0.05, weight_decay=0.01, momentum=0.9)
    for _ in range(steps):
        for a, b in zip(theirs_params, ours_params, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        theirs.step()  # type: ignore[no-untyped-call]  # torch.optim.Muon.step is unannotated
        ours.step()
    for a, b in zip(theirs_params, ours_params, strict=True):
        assert torch.equal(theirs.state[a]["momentum_buffer"], ours.state[b]["momentum_buffer"])
        assert (a - b).abs().max() < 5e-3
    return theirs, ours
