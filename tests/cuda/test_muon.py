"""Muon on the device: `BatchedMuon` (orthogonalisation batched, bfloat16 on CUDA) takes
`torch.optim.Muon`'s steps and keeps the same momentum state."""

from __future__ import annotations

from tests.cuda.device import DEVICE
from tests.support.muon_steps import step_both


def test_batched_muon_takes_torch_muons_steps_on_the_device() -> None:
    step_both([(384, 128), (128, 128), (512, 128), (128, 512), (384, 128)], DEVICE)
