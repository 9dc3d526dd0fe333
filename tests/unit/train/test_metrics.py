from __future__ import annotations

import pytest
import torch

from ml_playground.train.metrics import StepStats, measure_peak_flops, palm_flops_per_token


def test_palm_flops_per_token() -> None:
    # 6N + 12·L·H·Q·T
    assert (
        palm_flops_per_token(n_params=1000, n_layer=2, n_head=4, head_size=8, context=16) == 6000 + 12 * 2 * 4 * 8 * 16
    )


def test_mfu_is_achieved_over_peak() -> None:
    stats = StepStats(
        iter_num=0, loss=1.0, lr=1e-3, step_seconds=0.5, tokens=1000, flops_per_token=1e6, peak_flops=1e10
    )
    assert stats.tokens_per_sec == 2000
    assert stats.mfu == pytest.approx(2000 * 1e6 / 1e10)


def test_peak_probe_measures_without_touching_the_global_rng() -> None:
    torch.manual_seed(5)
    before = torch.get_rng_state()
    peak = measure_peak_flops(torch.device("cpu"), torch.float32, repeats=1)
    assert peak > 1e6
    assert torch.equal(torch.get_rng_state(), before)
