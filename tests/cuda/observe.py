"""What a run really used, read back from its model while it runs: the device and dtype of its
first matmul's output (autocast shows as that dtype, a silent CPU fallback as cpu) and whether
the forward ran inside torch.compile. A fallback or an ignored setting cannot pass `assert_ran`."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ml_playground.model import GPT
from ml_playground.train.modes import Mode, Start

# (device, dtype, compiling) of one forward of the watched layer. Under torch.compile the hook is
# traced with the forward, and dynamo replays its append after every compiled call.
Call = tuple[torch.device, torch.dtype, bool]


def watch(model: nn.Module, calls: list[Call]) -> None:
    """Append a Call to `calls` at every forward of `model`'s first linear layer (the first matmul)."""
    layer = next(module for module in model.modules() if isinstance(module, nn.Linear))

    def record(_module: nn.Module, _inputs: tuple[Any, ...], output: Tensor) -> None:
        calls.append((output.device, output.dtype, torch.compiler.is_compiling()))

    layer.register_forward_hook(record)


def watch_mode(mode: Mode, monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """The Calls of the model `mode` builds for a run (`train(cfg, mode)`)."""
    calls: list[Call] = []
    build = mode.build

    def build_and_watch(start: Start) -> GPT:
        model = build(start)
        watch(model, calls)
        return model

    monkeypatch.setattr(mode, "build", build_and_watch)
    return calls


def assert_ran(calls: list[Call], *, device: str, dtype: torch.dtype, compiled: bool) -> None:
    """Every recorded forward ran on `device` (its type), produced `dtype` and was (not) compiled."""
    assert calls, "the model never ran a forward"
    assert {(where.type, what) for where, what, _ in calls} == {(torch.device(device).type, dtype)}
    assert {inside for _, _, inside in calls} == {compiled}
