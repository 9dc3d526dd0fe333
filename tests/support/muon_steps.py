"""`BatchedMuon` against `torch.optim.Muon`: both step the same matrices with the same gradients;
the momentum must agree exactly and the weights to bfloat16 rounding (torch orthogonalises in
bfloat16 everywhere, ours in float32 off CUDA).

The bound, from bfloat16's precision: Newton-Schulz's 5 iterations round their operands to
bfloat16 (eps = 2**-7), which moves the orthogonalised update by a few eps of its largest entry
(about 2.5 eps measured for these shapes on CPU); over n steps those differences add up. So the
weights may differ by n x ROUNDINGS x eps x the largest single update, about 9% of one update for
3 steps; a wrong step (another scale, a missing momentum term, a transposed matrix) moves them by
a whole update or more."""

from __future__ import annotations

import torch
from torch import nn

from ml_playground.train.optim import BatchedMuon

ROUNDINGS = 4  # bfloat16 roundings one orthogonalised update may carry (2.5 measured)
LR, WEIGHT_DECAY = 0.05, 0.01


def step_both(shapes: list[tuple[int, int]], device: str, steps: int = 3) -> tuple[torch.optim.Muon, BatchedMuon]:
    """Both optimizers after `steps` steps from the same weights and gradients, checked as above."""
    torch.manual_seed(0)
    start = [torch.randn(shape, device=device) for shape in shapes]
    theirs_params = [nn.Parameter(t.clone()) for t in start]
    ours_params = [nn.Parameter(t.clone()) for t in start]
    theirs = torch.optim.Muon(theirs_params, lr=LR, weight_decay=WEIGHT_DECAY, momentum=0.9)
    ours = BatchedMuon(ours_params, lr=LR, weight_decay=WEIGHT_DECAY, momentum=0.9)
    largest_update = [0.0 for _ in shapes]  # of torch's steps, weight decay aside
    for _ in range(steps):
        before = [a.detach().clone() for a in theirs_params]
        for a, b in zip(theirs_params, ours_params, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        theirs.step()  # type: ignore[no-untyped-call]  # torch.optim.Muon.step is unannotated
        ours.step()
        for i, (a, old) in enumerate(zip(theirs_params, before, strict=True)):
            update = float((a.detach() - old * (1 - LR * WEIGHT_DECAY)).abs().max())
            largest_update[i] = max(largest_update[i], update)
    eps = torch.finfo(torch.bfloat16).eps
    for a, b, update in zip(theirs_params, ours_params, largest_update, strict=True):
        assert torch.equal(theirs.state[a]["momentum_buffer"], ours.state[b]["momentum_buffer"])
        assert float((a - b).detach().abs().max()) <= steps * ROUNDINGS * eps * update
    return theirs, ours
