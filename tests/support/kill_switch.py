"""`python -m tests.support.kill_switch <CLI arguments>`: the CLI, SIGKILLed at a chosen point of training.

A deterministic stand-in for `kill -9` from outside, which races the run (a busy machine can let
it finish first). With ML_PLAYGROUND_TEST_KILL="<rank>:<iter>:<steps>:<marker file>" the process
of that rank (RANK, 0 without torchrun) runs `steps` more train steps after the checkpoint at the
first evaluation at or past `iter`, flushes TensorBoard (so events past the checkpoint are on
disk, as after any periodic flush) and sends itself SIGKILL. Only once: it creates the marker file
first, and does nothing when it exists (torchrun --max-restarts reruns the same command).

The loop's own functions run unchanged; this only wraps them to count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from torch import Tensor

from ml_playground import cli
from ml_playground.train import loop as training_loop
from ml_playground.train.loop import LoopContext, TrainState

VARIABLE = "ML_PLAYGROUND_TEST_KILL"


def train_cli(config: Path, *, killed: bool = False, env: dict[str, str] | None = None) -> str:
    """`ml-playground train shakespeare --exp-config config` in a subprocess (under this switch when
    `killed`, which must then end it by SIGKILL); returns stderr, where the CLI logs."""
    module = __name__ if killed else "ml_playground.cli"
    result = subprocess.run(
        [sys.executable, "-m", module, "train", "shakespeare", "--exp-config", str(config)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,  # a hang, not a speed check
        # One intra-op thread: the CPU is shared, and spinning thread pools only slow tiny models down.
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    expected = -signal.SIGKILL if killed else 0
    assert result.returncode == expected, result.stderr[-3000:]
    return result.stderr


def spec(*, rank: int, after_iter: int, steps: int, marker: Path) -> dict[str, str]:
    """The environment entry that arms the switch."""
    return {VARIABLE: f"{rank}:{after_iter}:{steps}:{marker}"}


def arm(value: str) -> None:
    rank, after_iter, steps, marker_name = value.split(":", 3)
    marker = Path(marker_name)
    if int(os.environ.get("RANK", "0")) != int(rank) or marker.exists():
        return
    save, step = training_loop.maybe_save, training_loop.train_step
    steps_since_save: list[int] = []  # empty until the checkpoint at or past after_iter is saved

    def maybe_save(loop: LoopContext, state: TrainState, val_loss: float) -> None:
        save(loop, state, val_loss)
        if not steps_since_save and state.iter_num >= int(after_iter):
            steps_since_save.append(0)

    def train_step(loop: LoopContext) -> tuple[Tensor, Tensor | None]:
        if steps_since_save and steps_since_save[0] == int(steps):
            if loop.sink is not None:
                loop.sink.flush()
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if steps_since_save:
            steps_since_save[0] += 1
        return step(loop)

    training_loop.maybe_save = maybe_save
    training_loop.train_step = train_step


if __name__ == "__main__":
    arm(os.environ[VARIABLE])
    sys.exit(cli.main(sys.argv[1:]))
