"""GPT training targets that inject a fault at a chosen training step, for the loop's fault tests.

The faults are real: a NaN loss, an infinite gradient, or a signal the process sends itself in the
middle of a step (delivered by the OS like any SIGTERM). Everything else is the product's GPTTarget.

Run as `python -m tests.support.fault_targets '<[train] table as JSON>' SIGNAL STEP [AGAIN]` to train
through `train.run.run` with SIGNAL sent at training step STEP (and once more while the checkpoint
is being written when AGAIN is given).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from ml_playground.config_loader import parse_experiment_config
from ml_playground.errors import MLPlaygroundError
from ml_playground.model import GPT
from ml_playground.train.run import RunContext, resolve_architecture, run
from ml_playground.train.targets import GPTTarget


class FaultAt(GPTTarget):
    """GPTTarget with `fault` injected into the loss of training micro-step number `step` (0-based)."""

    def __init__(self, model: GPT, *, step: int, fault: str, again_on_save: bool = False):
        super().__init__(model)
        self.step, self.fault, self.again_on_save = step, fault, again_on_save
        self.calls = 0

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        loss = super().loss(x, y)
        if not self.model.training:
            return loss
        self.calls += 1
        if self.calls - 1 != self.step:
            return loss
        if self.fault == "nan":
            return loss * float("nan")
        if self.fault == "inf_grad":  # the loss stays finite; the gradient of one weight does not
            zero = self.model.lm_head.weight.view(-1)[:1] * 0
            return loss + zero.sqrt().sum()  # sqrt(0) = 0 forward, an infinite slope backward
        os.kill(os.getpid(), getattr(signal, self.fault))
        return loss

    def model_state(self) -> dict[str, Tensor]:
        if self.again_on_save and self.calls > self.step:
            os.kill(os.getpid(), getattr(signal, self.fault))  # a second signal while the checkpoint is written
        return super().model_state()


def fault_builder(step: int, fault: str, *, again_on_save: bool = False) -> Callable[[RunContext], FaultAt]:
    def build(ctx: RunContext) -> FaultAt:
        model = GPT(resolve_architecture(ctx.cfg, ctx.meta, ctx.checkpoint)).to(ctx.runtime.device)
        return FaultAt(model, step=step, fault=fault, again_on_save=again_on_save)

    return build


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = parse_experiment_config({"train": json.loads(argv[0])}, Path("faults.toml")).train
    assert cfg is not None
    try:
        run(cfg, fault_builder(int(argv[2]), argv[1], again_on_save=len(argv) > 3))
    except MLPlaygroundError as exc:
        print(f"{exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
