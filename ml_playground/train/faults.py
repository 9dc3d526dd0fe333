"""Faults a run survives without losing work: a non-finite step and a stop signal.

`NonFiniteGuard` records the first step whose loss or gradient norm is not finite on the device
(masked in-place updates: no host-device sync per step); the loop reads it at log and evaluation
steps, where it synchronises anyway, and always before it writes a checkpoint, so no checkpoint
ever holds the weights of a non-finite step.

`stop_signals` turns SIGTERM, SIGINT and SIGHUP into a request the loop answers after the current
optimizer step: it writes ckpt_last.pt and ends the run with `errors.TrainingStoppedError` (exit 128 +
signal number). Further signals while it does so are noted and ignored, so a save is never cut short.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Generator
from dataclasses import dataclass
from types import FrameType

import torch
from torch import Tensor

from ml_playground.errors import TrainingDivergedError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A step number larger than any run: "no bad step yet".
_NONE = 2**62


class NonFiniteGuard:
    """The first non-finite step of a run, with its loss and learning rate, kept on the device."""

    never = _NONE  # `step` until a non-finite step is recorded

    def __init__(self, device: torch.device):
        self.step = torch.full((), _NONE, dtype=torch.int64, device=device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)
        self.lr = torch.zeros((), dtype=torch.float64, device=device)

    def record(self, iter_num: int, loss: Tensor, grad_norm: Tensor | None, lr: float) -> None:
        """Note step `iter_num` if it is the first non-finite one (no sync)."""
        bad = ~torch.isfinite(loss)
        if grad_norm is not None:
            bad |= ~torch.isfinite(grad_norm)
        first = bad & (self.step == _NONE)
        self.step.masked_fill_(first, iter_num)
        self.loss.copy_(torch.where(first, loss.float(), self.loss))
        self.lr.masked_fill_(first, lr)

    def error(self, step: int, where: str) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"training diverged at iter {step}: loss {self.loss.item():.4g}, lr {self.lr.item():.4g} "
            f"(loss or gradient norm not finite); no checkpoint was written after it, {where} keeps the last "
            "good state; lower train.optim.learning_rate or set train.optim.grad_clip"
        )


@dataclass(slots=True)
class StopRequest:
    """Set by a signal handler; read by the loop after each optimizer step."""

    signum: int | None = None


@contextlib.contextmanager
def stop_signals() -> Generator[StopRequest]:
    """Catch STOP_SIGNALS as a StopRequest while the block runs (main thread only), then restore
    the previous handlers."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be installed from the main thread
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        if request.signum is None:
            request.signum = signum
            log.warning("%s received: saving after the current step, then stopping", signal.Signals(signum).name)
        else:
            log.warning("%s received again: still saving, please wait", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
