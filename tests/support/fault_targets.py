"""A training mode whose GPT injects a fault at a chosen training step, for the loop's fault tests.

The faults are real: a NaN loss, an infinite gradient, or a signal the process sends itself in the
middle of a step (delivered by the OS like any SIGTERM). Everything else is the product's loop and
its default mode (the GPT of [train.model], or of the resumed checkpoint).

Run as `python -m tests.support.fault_targets '<[train] table as JSON>' SIGNAL STEP [AGAIN]` to train
through `train.loop.train` with SIGNAL sent at training step STEP (and once more while the checkpoint
is being written when AGAIN is given).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

from ml_playground.config_loader import parse_experiment_config
from ml_playground.errors import MLPlaygroundError
from ml_playground.model import GPT, ModelOutput
from ml_playground.train.loop import train
from ml_playground.train.modes import Mode, Start


class FaultAt(GPT):
    """GPT with `fault` injected into the loss of training micro-step number `step` (0-based)."""

    step: int = 0
    fault: str = "nan"
    calls: int = 0

    def forward(self, idx: Tensor, targets: Tensor | None = None, **kwargs: Any) -> ModelOutput:
        out = super().forward(idx, targets, **kwargs)
        if not self.training or out.loss is None:
            return out
        self.calls += 1
        if self.calls - 1 != self.step:
            return out
        if self.fault == "nan":
            return ModelOutput(out.logits, out.loss * float("nan"))
        if self.fault == "inf_grad":  # the loss stays finite; the gradient of one weight does not
            zero = self.lm_head.weight.view(-1)[:1] * 0
            return ModelOutput(out.logits, out.loss + zero.sqrt().sum())  # sqrt(0) = 0 forward, infinite slope backward
        os.kill(os.getpid(), getattr(signal, self.fault))
        return out


class FaultMode(Mode):
    """The default mode, training a `FaultAt` of the same architecture."""

    def __init__(self, step: int, fault: str, *, again_on_save: bool = False):
        self.step, self.fault, self.again_on_save = step, fault, again_on_save
        self.model: FaultAt | None = None

    def build(self, start: Start) -> GPT:
        model = FaultAt(super().build(start).config)
        model.step, model.fault = self.step, self.fault
        self.model = model
        return model

    def saved_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.again_on_save and self.model is not None and self.model.calls > self.step:
            os.kill(os.getpid(), getattr(signal, self.fault))  # a second signal while the checkpoint is written
        return state


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = parse_experiment_config({"train": json.loads(argv[0])}, Path("faults.toml")).train
    assert cfg is not None
    try:
        train(cfg, FaultMode(int(argv[2]), argv[1], again_on_save=len(argv) > 3))
    except MLPlaygroundError as exc:
        print(f"{exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
