"""The step cases' training runs, through the run entry point that `make train` uses.

`timed_steps` calls `train(cfg, mode, on_step=...)`: the callback syncs the device and stamps the
end of every step, so a step's time is one whole iteration of the trainer's loop; set-up and the
evaluations and checkpoints around the steps fall outside the stamps. The run's TensorBoard
scalars are read back and set against the stamps (`LoggedVsWall`).
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from torch import Tensor

from ml_playground.bench.context import BenchContext
from ml_playground.bench.shapes import ModelShape
from ml_playground.bench.timing import StepClock, Timing
from ml_playground.config import (
    DataConfig,
    DType,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TrainRuntimeConfig,
)
from ml_playground.model import GPT
from ml_playground.train.loop import train
from ml_playground.train.metrics import TB_SUBDIR, flops_per_token, read_scalars
from ml_playground.train.modes import Mode, Start

LOG_INTERVAL = 5  # windows short enough that several fit in the timed steps


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedVsWall:
    """The logged throughput windows after warm-up against the wall clock of the same steps."""

    logged_seconds: float  # sum over the windows of steps x the logged ms per step
    wall_seconds: float  # the same steps between their `on_step` stamps
    steps: int

    @property
    def ratio(self) -> float:
        """Logged tokens/s over wall-clock tokens/s (1.0: the log tells the truth)."""
        return self.wall_seconds / self.logged_seconds

    def __add__(self, other: LoggedVsWall) -> LoggedVsWall:
        return LoggedVsWall(
            logged_seconds=self.logged_seconds + other.logged_seconds,
            wall_seconds=self.wall_seconds + other.wall_seconds,
            steps=self.steps + other.steps,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRun:
    """What `timed_steps` measured."""

    timing: Timing  # the steps after warm-up
    losses: tuple[float, ...]  # every step's loss, warm-up included
    flops_per_token: float  # of the run's target, for MFU
    logged: LoggedVsWall | None  # None: fewer than two log steps after warm-up


def logged_vs_wall(step_ms: list[tuple[int, float]], stamps: dict[int, float], *, first: int) -> LoggedVsWall | None:
    """The log windows from the first to the last stamped log step at or after step `first`: a
    window ending at log step b after log step a holds steps a+1..b, logged as (b - a) x b's ms per
    step; on the wall clock the whole span is stamps[last] - stamps[first] (`stamps[i]` ends step i)."""
    logged = sorted((step, ms) for step, ms in step_ms if step >= first)
    stamped = [step for step, _ in logged if step in stamps]
    if len(stamped) < 2:
        return None
    lo, hi = stamped[0], stamped[-1]
    window = [(step, ms) for step, ms in logged if lo <= step <= hi]
    return LoggedVsWall(
        logged_seconds=sum((b - a) * ms_b / 1000 for (a, _), (b, ms_b) in itertools.pairwise(window)),
        wall_seconds=stamps[hi] - stamps[lo],
        steps=hi - lo,
    )


def train_config(ctx: BenchContext, shape: ModelShape, batch_size: int) -> TrainConfig:
    """nanoGPT's train_shakespeare_char optimizer settings around `shape`, on the benchmark's
    char-level corpus, in float32 without compile; no steps yet (`timed_steps` sets them).

    MFU uses the peak this benchmark measured, so no run probes again."""
    return TrainConfig(
        model=shape.applied_to(ModelConfig()),
        data=DataConfig(dataset_dir=ctx.char_dir, batch_size=batch_size, block_size=shape.block_size),
        optim=OptimConfig(learning_rate=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0),
        schedule=ScheduleConfig(warmup_iters=100, lr_decay_iters=2000, min_lr=1e-4),
        runtime=TrainRuntimeConfig(
            out_dir=ctx.work_dir / "run",
            device=ctx.device_name,
            max_iters=0,
            eval_iters=1,
            log_interval=LOG_INTERVAL,
            peak_flops=ctx.peaks.float32,
        ),
    )


def precision(ctx: BenchContext, cfg: TrainConfig, *, dtype: DType, compile: bool) -> TrainConfig:
    """`cfg` computing in `dtype` (MFU against that dtype's measured peak), compiled or not."""
    runtime = replace(cfg.runtime, dtype=dtype, compile=compile, peak_flops=ctx.peaks.of(dtype))
    return replace(cfg, runtime=runtime)


def fresh_run(cfg: TrainConfig, out_dir: Path, *, steps: int) -> TrainConfig:
    """`cfg` for `steps` steps into an emptied `out_dir` (a leftover ckpt_last.pt would be
    resumed), evaluating only before the first step and after the last."""
    shutil.rmtree(out_dir, ignore_errors=True)
    runtime = replace(cfg.runtime, out_dir=out_dir, max_iters=steps, eval_interval=max(steps, 1))
    return replace(cfg, runtime=runtime)


def timed_steps(
    ctx: BenchContext, cfg: TrainConfig, out_dir: Path, *, warmup: int, reps: int, every: int = 1
) -> StepRun:
    """A fresh `train` of warmup + reps timed steps (plus the first, which has no stamp before it),
    stamped every `every` steps (`StepClock`); reps is rounded up to whole windows."""
    clock = StepClock(ctx.device, every=every)
    losses: list[Tensor] = []
    flops: list[float] = []

    class Measured(Mode):
        def build(self, start: Start) -> GPT:
            model = super().build(start)
            flops.append(flops_per_token(model, start.cfg.data.block_size))
            return model

    def on_step(_iter_num: int, loss: Tensor) -> None:
        clock.stamp()
        losses.append(loss)  # read after the run: reading it now would wait for the device

    warmup, steps = clock.plan(warmup, reps)
    train(fresh_run(cfg, out_dir, steps=steps), Measured(), on_step=on_step)
    step_ms = read_scalars(out_dir / TB_SUBDIR).get("train/step_time_ms", [])
    return StepRun(
        timing=clock.steps(warmup),
        losses=tuple(float(loss) for loss in losses),
        flops_per_token=flops[0],
        logged=logged_vs_wall(step_ms, clock.stamped_steps(), first=warmup),
    )
