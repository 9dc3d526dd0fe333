"""The training loop shared by every run mode: fit, train_step, evaluate, maybe_save, resume.

One loop: warmup+cosine LR, gradient accumulation, clipping, eval every `eval_interval` steps,
`ckpt_last.pt` at every eval, `ckpt_best.pt` when val loss improves (or always with
`always_save_checkpoint`), exact resume from a checkpoint. What it trains is a `TrainingTarget`
(targets.py); run.py sets a run up and calls `fit`.

Exact resume: a checkpoint is taken right after an evaluation, before the step with the same
number; it holds model, optimizer, scaler, every RNG state and the batch source's position.
Evaluation draws from its own fixed batch stream and uses no dropout, so it does not move any
state the next training step reads. Resuming restores all of it and continues with that step.
The batch prefetched during the last step is not part of the saved position: it is drawn again.

Throughput is logged per window between log steps (metrics.ThroughputClock): the device is
synchronised at both ends, and evaluations and saves are paused out.

Under torchrun (see distributed.py) the same loop runs on every rank: the target syncs gradients
on the last micro-step only, each rank draws its own data, losses are averaged over ranks, rank 0
alone logs and writes the checkpoint (holding every rank's RNG and data position) while the
others wait for it.

Faults (faults.py): a non-finite loss or gradient norm is recorded on the device and read at the
next log or evaluation step, and before any save, so the run stops before a checkpoint could hold
it. A stop signal ends the run after the current optimizer step with ckpt_last.pt written (under
torchrun the ranks agree at the next log or evaluation step, so all stop at the same step).
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from ml_playground.config import TrainConfig
from ml_playground.data.batches import BatchSource
from ml_playground.errors import CheckpointError, TrainingStoppedError
from ml_playground.runtime import Runtime, keep_freed_memory_for_reuse, rng_state, set_rng_state
from ml_playground.train.checkpoint import BEST_NAME, LAST_NAME, Checkpoint, copy_checkpoint, save_checkpoint
from ml_playground.train.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    all_reduce_min,
    barrier,
    grad_accum_steps_for,
)
from ml_playground.train.faults import NonFiniteGuard, StopRequest
from ml_playground.train.metrics import (
    MetricsSink,
    StepStats,
    ThroughputClock,
    check_cpu_bfloat16,
    measure_peak_flops,
)
from ml_playground.train.optim import build_optimizer, set_learning_rate
from ml_playground.train.schedule import learning_rate
from ml_playground.train.targets import TrainingTarget

log = logging.getLogger(__name__)

_CONFIG_ADAPTER: TypeAdapter[TrainConfig] = TypeAdapter(TrainConfig)

# Called after every optimizer step (logging included) with the step's iter_num and its mean loss,
# a detached device tensor (reading it waits for the device). The benchmark timestamps steps with it.
StepCallback = Callable[[int, Tensor], None]


@dataclass(slots=True, kw_only=True)
class TrainState:
    iter_num: int = 0
    best_val_loss: float = math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainResult:
    iter_num: int
    best_val_loss: float
    last_eval: dict[str, float] | None


@dataclass(slots=True, kw_only=True)
class LoopContext:
    """Everything the steps of one run share (the loop itself is `run_steps`)."""

    cfg: TrainConfig
    target: TrainingTarget
    batches: BatchSource
    runtime: Runtime
    dist: DistInfo
    grad_accum_steps: int  # per rank; see grad_accum_steps_for
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dataset_meta: dict[str, Any] | None
    sink: MetricsSink | None
    guard: NonFiniteGuard
    stop: StopRequest
    # The stop signal all ranks agreed on at the last log or evaluation step (0: none).
    agreed_stop: int = 0

    @property
    def out_dir(self) -> Path:
        return self.cfg.runtime.out_dir

    @property
    def tokens_per_step(self) -> int:
        data = self.cfg.data
        return data.batch_size * data.block_size * self.grad_accum_steps * self.dist.world_size


def train_step(loop: LoopContext) -> tuple[Tensor, Tensor | None]:
    """One optimizer step over grad_accum_steps micro-batches; returns the mean loss (detached) and
    the gradient norm before clipping (None under a grad scaler, which skips non-finite steps itself)."""
    accum = loop.grad_accum_steps
    total = torch.zeros((), device=loop.runtime.device)
    x, y = loop.batches.get_batch("train")  # prefetched during the previous step, if there was one
    for micro in range(accum):
        with loop.target.grad_sync(micro == accum - 1):
            with loop.runtime.autocast():
                loss = loop.target.loss(x, y) / accum
            # The forward pass is queued on the device: read and copy the next micro-batch (after the
            # last one, the next step's first) while it runs, so the device never waits for data.
            loop.batches.prefetch("train")
            scaled: Tensor = loop.scaler.scale(loss)
            torch.autograd.backward(scaled)
        total += loss.detach().float()
        if micro < accum - 1:
            x, y = loop.batches.get_batch("train")
    norm = _grad_norm(loop)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    return total, norm


def _grad_norm(loop: LoopContext) -> Tensor | None:
    """Clip to grad_clip (when > 0) and return the total norm before clipping, on the device; None
    under a grad scaler, whose step skips inf/NaN gradients itself."""
    params = loop.target.trainable_parameters()
    scaled = loop.scaler.is_enabled()
    if loop.cfg.optim.grad_clip > 0:
        loop.scaler.unscale_(loop.optimizer)
        norm = nn.utils.clip_grad_norm_(params, loop.cfg.optim.grad_clip)
    elif scaled:
        return None
    else:
        norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if scaled:
        return None
    return norm.full_tensor() if isinstance(norm, DTensor) else norm  # FSDP: a sharded norm


@torch.no_grad()
def evaluate(loop: LoopContext) -> dict[str, float]:
    """Mean loss over eval_iters fixed batches of each split (model in eval mode), over all ranks."""
    loop.target.set_training(False)
    losses: dict[str, float] = {}
    for split in ("train", "val"):
        values: list[float] = []
        for x, y in loop.batches.eval_batches(split, loop.cfg.runtime.eval_iters):
            with loop.runtime.autocast():
                values.append(loop.target.loss(x, y).item())
        mean = torch.tensor(sum(values) / len(values), dtype=torch.float64, device=loop.runtime.device)
        losses[split] = all_reduce_mean(loop.dist, mean).item()
    loop.target.set_training(True)
    return losses


def build_checkpoint(loop: LoopContext, state: TrainState) -> Checkpoint:
    """Called on every rank (gathering sharded weights and per-rank states are collectives);
    only rank 0's result is complete and written."""
    rank_states = (
        all_gather_objects(loop.dist, {"rng": rng_state(), "data_state": loop.batches.state_dict()})
        if loop.dist.is_distributed
        else None
    )
    return Checkpoint(
        schema_version=1,
        model=loop.target.model_state(),
        arch=loop.target.architecture(),
        optimizer=loop.target.optimizer_state(loop.optimizer),
        scaler=loop.scaler.state_dict() if loop.scaler.is_enabled() else None,
        iter_num=state.iter_num,
        best_val_loss=state.best_val_loss,
        config=_CONFIG_ADAPTER.dump_python(loop.cfg, mode="json"),
        rng=rng_state(),
        data_state=loop.batches.state_dict(),
        dataset_meta=loop.dataset_meta,
        extra=loop.target.extra_state(),
        rank_states=rank_states,
    )


def maybe_save(loop: LoopContext, state: TrainState, val_loss: float) -> None:
    """ckpt_last.pt at every eval; ckpt_best.pt when val improves or always_save_checkpoint.

    Rank 0 writes; every rank (all hold the same all-reduced val loss) waits until it is done."""
    improved = val_loss < state.best_val_loss
    if improved:
        state.best_val_loss = val_loss
    checkpoint = build_checkpoint(loop, state)
    if loop.dist.is_main:
        if loop.sink is not None:
            loop.sink.flush()  # events up to this checkpoint survive a kill
        save_checkpoint(loop.out_dir / LAST_NAME, checkpoint)
        best = improved or loop.cfg.runtime.always_save_checkpoint
        if best:  # the same bytes: linked (or copied), not serialized and written again
            copy_checkpoint(loop.out_dir / LAST_NAME, loop.out_dir / BEST_NAME)
        log.info("saved %s%s at iter %d", LAST_NAME, f" and {BEST_NAME}" if best else "", state.iter_num)
        loop.target.on_checkpoint(loop.out_dir, best)
    barrier(loop.dist)


def resume(loop: LoopContext, checkpoint: Checkpoint) -> TrainState:
    """Restore weights, optimizer, scaler, data position and RNG; continue at iter_num.

    Each rank restores its own RNG and data position when the world size is the one the
    checkpoint was written with; with another world size only weights, optimizer and step
    resume (the data order changes, and a warning says so)."""
    loop.target.load_model_state(checkpoint.model)
    if checkpoint.optimizer is None:
        raise CheckpointError(f"{loop.out_dir / LAST_NAME}: has no optimizer state to resume from")
    try:
        loop.target.load_optimizer_state(loop.optimizer, checkpoint.optimizer)
    except CheckpointError as exc:
        raise CheckpointError(f"{loop.out_dir / LAST_NAME}: {exc}") from None
    if checkpoint.scaler is not None and loop.scaler.is_enabled():
        loop.scaler.load_state_dict(checkpoint.scaler)
    rng, data_state = _own_rank_state(loop, checkpoint)
    if data_state is not None:
        loop.batches.load_state_dict(data_state)
    if rng is not None:
        set_rng_state(rng)
    log.info(
        "resuming from %s at iter %d (best val loss %.4f)",
        loop.out_dir / LAST_NAME,
        checkpoint.iter_num,
        checkpoint.best_val_loss,
    )
    return TrainState(iter_num=checkpoint.iter_num, best_val_loss=checkpoint.best_val_loss)


def _own_rank_state(loop: LoopContext, checkpoint: Checkpoint) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(rng, data_state) this rank continues from; (None, None) after a world size change."""
    saved_world = 1 if checkpoint.rank_states is None else len(checkpoint.rank_states)
    if saved_world != loop.dist.world_size:
        if loop.dist.is_main:
            log.warning(
                "%s was written by %d rank(s), now %d: weights, optimizer and step resume, but the data "
                "order changes (each rank's stream restarts from the seed)",
                loop.out_dir / LAST_NAME,
                saved_world,
                loop.dist.world_size,
            )
        return None, None
    if checkpoint.rank_states is None:
        return checkpoint.rng, checkpoint.data_state
    own = checkpoint.rank_states[loop.dist.rank]
    return own.get("rng"), own.get("data_state")


def _is_eval_step(cfg: TrainConfig, iter_num: int) -> bool:
    return iter_num % cfg.runtime.eval_interval == 0 or iter_num == cfg.runtime.max_iters


def build_loop(
    cfg: TrainConfig,
    target: TrainingTarget,
    batches: BatchSource,
    runtime: Runtime,
    *,
    dist: DistInfo,
    dataset_meta: dict[str, Any] | None,
    stop: StopRequest | None = None,
) -> LoopContext:
    """Optimizer and grad scaler for `target`; the metrics sink is opened by `fit`. `stop` is
    set by signal handlers (run.py); without one the loop never stops early."""
    return LoopContext(
        cfg=cfg,
        target=target,
        batches=batches,
        runtime=runtime,
        dist=dist,
        grad_accum_steps=grad_accum_steps_for(cfg.data, dist.world_size),
        optimizer=build_optimizer(
            target.trainable_parameters(), cfg.optim, runtime.device_type, hidden_matrices=target.hidden_matrices()
        ),
        scaler=torch.amp.GradScaler(runtime.device_type, enabled=runtime.uses_grad_scaler),
        dataset_meta=dataset_meta,
        sink=None,
        guard=NonFiniteGuard(runtime.device),
        stop=stop if stop is not None else StopRequest(),
    )


def fit(
    cfg: TrainConfig,
    target: TrainingTarget,
    batches: BatchSource,
    runtime: Runtime,
    *,
    dist: DistInfo,
    dataset_meta: dict[str, Any] | None,
    resume_from: Checkpoint | None,
    stop: StopRequest | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train `target` from [train]; resumes exactly from `resume_from` when given."""
    if runtime.device_type == "cpu" and keep_freed_memory_for_reuse():
        log.debug("glibc malloc: large blocks come from the heap and freed memory is kept for reuse")
    loop = build_loop(cfg, target, batches, runtime, dist=dist, dataset_meta=dataset_meta, stop=stop)
    state = TrainState() if resume_from is None else resume(loop, resume_from)
    start = state.iter_num
    if dist.is_main:
        loop.sink = MetricsSink(loop.out_dir, purge_step=start if resume_from is not None else None)
    try:
        return run_steps(loop, state, resumed=resume_from is not None, start=start, on_step=on_step)
    finally:
        if loop.sink is not None:
            loop.sink.close()


def _measured_peak(runtime: Runtime) -> float:
    peak = measure_peak_flops(runtime.device, runtime.torch_dtype)
    log.info("peak for MFU: %.1f GFLOP/s (%s matmul probe on %s)", peak / 1e9, runtime.dtype, runtime.device)
    return peak


def check_point(loop: LoopContext) -> None:
    """At log and evaluation steps and before any save (it syncs the device): fail on a recorded
    non-finite step; under torchrun also agree on a stop signal, so every rank stops at one step."""
    flags = torch.stack([loop.guard.step, torch.tensor(-(loop.stop.signum or 0), device=loop.guard.step.device)])
    reduced = all_reduce_min(loop.dist, flags)
    bad_step, signum = int(reduced[0]), int(reduced[1])
    if bad_step != loop.guard.never:
        raise loop.guard.error(bad_step, f"{loop.out_dir / LAST_NAME}")
    loop.agreed_stop = -signum


def save_last(loop: LoopContext, state: TrainState) -> None:
    """ckpt_last.pt at a step without evaluation (a stop); ckpt_best.pt stays as it is."""
    check_point(loop)
    checkpoint = build_checkpoint(loop, state)
    if loop.dist.is_main:
        if loop.sink is not None:
            loop.sink.flush()
        save_checkpoint(loop.out_dir / LAST_NAME, checkpoint)
    barrier(loop.dist)


def _stop_signal(loop: LoopContext) -> int:
    """The signal to stop for now (0: go on): one process stops after the step a signal came
    in; ranks stop where they agreed (check_point)."""
    return loop.agreed_stop if loop.dist.is_distributed else (loop.stop.signum or 0)


def _evaluate_and_save(loop: LoopContext, state: TrainState) -> dict[str, float]:
    check_point(loop)  # never evaluate and save the weights of a non-finite step
    losses = evaluate(loop)
    if loop.sink is not None:
        loop.sink.log_eval(state.iter_num, losses)
    if not loop.cfg.runtime.eval_only:
        maybe_save(loop, state, losses["val"])
    return losses


def _stopped(loop: LoopContext, state: TrainState, signum: int, saved_now: bool) -> TrainingStoppedError:
    if not saved_now:
        save_last(loop, state)
    name = signal.Signals(signum).name
    return TrainingStoppedError(
        f"{name} at iter {state.iter_num}: saved {loop.out_dir / LAST_NAME}; the same command resumes from there",
        signum,
    )


def run_steps(
    loop: LoopContext, state: TrainState, *, resumed: bool, start: int, on_step: StepCallback | None = None
) -> TrainResult:
    cfg = loop.cfg
    if resumed and start >= cfg.runtime.max_iters and not cfg.runtime.eval_only:
        log.info("already at iter %d of max_iters %d: nothing to train", start, cfg.runtime.max_iters)
        return TrainResult(iter_num=start, best_val_loss=state.best_val_loss, last_eval=None)
    runtime = loop.runtime
    if runtime.device_type == "cpu" and runtime.dtype == "bfloat16" and loop.dist.is_main:
        check_cpu_bfloat16(runtime.device)
    # MFU counts the tokens of all ranks, so it is measured against the peak of all devices.
    peak = (cfg.runtime.peak_flops or _measured_peak(runtime)) * loop.dist.world_size
    flops_per_token = loop.target.flops_per_token(cfg.data.block_size)
    clock = ThroughputClock.for_device(runtime.device)  # paused until the first step
    last_eval: dict[str, float] | None = None
    while True:
        # The eval at the resumed step already happened (and was saved) before the interruption.
        evaluates = _is_eval_step(cfg, state.iter_num) and (state.iter_num != start or not resumed)
        if evaluates or cfg.runtime.eval_only:
            clock.pause()  # evaluating and saving is not training throughput
            last_eval = _evaluate_and_save(loop, state)
            if cfg.runtime.eval_only:
                break
        if state.iter_num >= cfg.runtime.max_iters:
            break
        signum = _stop_signal(loop)
        if signum:
            raise _stopped(loop, state, signum, saved_now=evaluates)
        lr = learning_rate(state.iter_num, cfg.optim.learning_rate, cfg.schedule)
        set_learning_rate(loop.optimizer, lr, cfg.optim)
        clock.start()
        loss, grad_norm = train_step(loop)
        clock.count(loop.tokens_per_step)
        loop.guard.record(state.iter_num, loss, grad_norm, lr)
        if state.iter_num % cfg.runtime.log_interval == 0:
            window = clock.lap()  # syncs the device: the window holds the work of its steps
            check_point(loop)
            # Every rank joins the mean; it syncs the device, so only on log steps.
            loss_value = all_reduce_mean(loop.dist, loss).item()
            if loop.sink is not None:
                stats = StepStats(
                    iter_num=state.iter_num,
                    loss=loss_value,
                    lr=lr,
                    window=window,
                    flops_per_token=flops_per_token,
                    peak_flops=peak,
                )
                loop.sink.log_step(stats)
        if on_step is not None:
            on_step(state.iter_num, loss)
        state.iter_num += 1
    return TrainResult(iter_num=state.iter_num, best_val_loss=state.best_val_loss, last_eval=last_eval)
