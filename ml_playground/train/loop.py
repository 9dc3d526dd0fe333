"""The training loop of every mode: `train(cfg, mode)` reads top to bottom like nanoGPT's train.py.

Set up (torchrun environment, process group, out_dir lock, stop signals, dataset, resume
checkpoint, the mode's GPT, DDP/FSDP/compile, optimizer, batches), then one iteration per
optimizer step: learning rate, micro-steps, clip, step, log, and at evaluation steps evaluate
and save. `ckpt_last.pt` is written at every evaluation, `ckpt_best.pt` when val loss improves
(or always with `always_save_checkpoint`). What the modes differ in is modes.py.

Exact resume: a checkpoint is taken right after an evaluation, before the step with the same
number; it holds model, optimizer, scaler, every RNG state and the batch source's position.
Evaluation draws from its own fixed batch stream and uses no dropout, so it does not move any
state the next training step reads. Resuming restores all of it and continues with that step.
The batch prefetched during the last step is not part of the saved position: it is drawn again.

Throughput is logged per window between log steps (metrics.ThroughputClock): the device is
synchronised at both ends, and evaluations and saves are paused out.

Under torchrun (distributed.py) every rank runs this loop: gradients sync on the last micro-step
only, each rank draws its own data, losses are averaged over ranks, rank 0 alone logs and writes
the checkpoint (holding every rank's RNG and data position) while the others wait for it.

Faults (faults.py): a non-finite loss or gradient norm is recorded on the device and read at the
next log or evaluation step, and before any save, so the run stops before a checkpoint could hold
it. A stop signal ends the run after the current optimizer step with ckpt_last.pt written (under
torchrun the ranks agree at the next log or evaluation step, so all stop at the same step).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter
from torch import Tensor, nn

from ml_playground.config import TrainConfig
from ml_playground.data.batches import BatchSource
from ml_playground.data.checks import check_dataset
from ml_playground.data.meta import DatasetMeta, identity_difference, read_meta
from ml_playground.errors import CheckpointError, DataError, TrainingStoppedError
from ml_playground.evaluation.training import evaluate_tasks
from ml_playground.model import GPT
from ml_playground.runtime import (
    Runtime,
    keep_freed_memory_for_reuse,
    memory_for,
    resolve_runtime,
    rng_state,
    seed_everything,
    set_rng_state,
)
from ml_playground.tokenizers import tokenizer_from_meta
from ml_playground.train.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    Checkpoint,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
    weights_mismatch,
)
from ml_playground.train.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    all_reduce_min,
    barrier,
    dist_info_from_env,
    grad_accum_steps_for,
    process_group,
    translate_peer_failures,
)
from ml_playground.train.faults import NonFiniteGuard, StopRequest, stop_signals
from ml_playground.train.lock import out_dir_lock
from ml_playground.train.metrics import (
    MetricsSink,
    StepStats,
    ThroughputClock,
    bits_per_byte,
    check_cpu_bfloat16,
    flops_per_token,
    peak_cache_file,
    peak_flops,
    token_bytes_of,
)
from ml_playground.train.modes import Mode, Start
from ml_playground.train.optim import block_matrices, build_optimizer, set_learning_rate
from ml_playground.train.parallel import Parallel
from ml_playground.train.schedule import learning_rate

log = logging.getLogger(__name__)

_CONFIG_ADAPTER: TypeAdapter[TrainConfig] = TypeAdapter(TrainConfig)

# Called after every optimizer step (logging included) with the step's iter_num and its mean loss,
# a detached device tensor (reading it waits for the device). The benchmark timestamps steps with it.
StepCallback = Callable[[int, Tensor], None]


@dataclass(slots=True, kw_only=True)
class TrainState:
    iter_num: int = 0
    best_val_loss: float = math.inf
    last_eval: dict[str, float] | None = None  # losses and bits per byte of the latest evaluation


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainResult:
    iter_num: int
    best_val_loss: float
    last_eval: dict[str, float] | None


def train(cfg: TrainConfig, mode: Mode | None = None, *, on_step: StepCallback | None = None) -> TrainResult:
    """`make train`: train the GPT `mode` builds (default: [train.model] from scratch; the CLI
    picks Pretrained or LoRA from the config) on [train.data]; resumes exactly from out_dir's
    ckpt_last.pt when it exists.

    Under torchrun every rank runs this. `on_step` is called after every optimizer step."""
    mode = Mode() if mode is None else mode
    dist = dist_info_from_env()
    grad_accum_steps_for(cfg.data, dist.world_size)  # a global batch that does not divide fails first
    runtime = resolve_runtime(cfg.runtime.device, cfg.runtime.dtype, dist.local_rank if dist.is_distributed else None)
    if not dist.is_main:
        logging.getLogger("ml_playground").setLevel(logging.WARNING)  # rank 0 tells the story
    with run_guard(cfg, dist, runtime) as stop:
        meta = read_meta(cfg.data.meta_path)
        check_dataset(cfg.data, meta)
        checkpoint = load_resume_checkpoint(cfg.runtime.out_dir)
        if checkpoint is not None:
            check_same_dataset(checkpoint, meta, cfg)
        if dist.is_main and not cfg.runtime.eval_only:
            tidy_out_dir(cfg.runtime.out_dir, checkpoint)
        # The same initial weights on every rank (FSDP shards them as they are; DDP would broadcast
        # rank 0's anyway), then a different dropout stream per rank.
        seed_everything(cfg.runtime.seed)
        with memory_for("the model", runtime.device):
            model = mode.build(Start(cfg=cfg, meta=meta, checkpoint=checkpoint)).to(runtime.device)
        log.info("model: %.2fM parameters (without position embeddings)", model.num_params() / 1e6)
        kind = cfg.runtime.parallel if dist.is_distributed else "none"
        parallel = Parallel(model, kind=kind, compile=cfg.runtime.compile)
        if dist.rank != 0:
            seed_everything(cfg.runtime.seed + dist.rank)
        batches = BatchSource.for_run(cfg, meta, runtime.device, rank=dist.rank, world_size=dist.world_size)
        loop = build_loop(cfg, parallel, batches, runtime, dist=dist, mode=mode, dataset_meta=meta.to_dict(), stop=stop)
        state = TrainState() if checkpoint is None else resume(loop, checkpoint)
        log_run(loop)
        if checkpoint is not None and state.iter_num >= cfg.runtime.max_iters and not cfg.runtime.eval_only:
            log.info("already at iter %d of max_iters %d: nothing to train", state.iter_num, cfg.runtime.max_iters)
            return TrainResult(iter_num=state.iter_num, best_val_loss=state.best_val_loss, last_eval=None)
        if runtime.device_type == "cpu" and runtime.dtype == "bfloat16" and dist.is_main:
            check_cpu_bfloat16(runtime.device)
        # MFU counts the tokens of all ranks, so it is measured against the peak of all devices.
        peak = (cfg.runtime.peak_flops or _measured_peak(runtime)) * dist.world_size
        model_flops = flops_per_token(model, cfg.data.block_size)
        if dist.is_main:
            loop.sink = MetricsSink(cfg.runtime.out_dir, purge_step=state.iter_num if checkpoint is not None else None)
        clock = ThroughputClock.for_device(runtime.device)  # paused until the first step
        start, last_eval = state.iter_num, None
        # The first step is evaluated only where something is compared with it: a resumed run did so
        # (and saved) before the interruption, and a fresh run from scratch would measure and save
        # its random weights (the first step logs their loss anyway); from init_from it is the base's
        # val loss, the baseline the finetune must beat. The last step is always evaluated.
        evaluates_start = checkpoint is None and cfg.model.init_from != "scratch"
        try:
            while True:
                evaluates = is_eval_step(cfg, state.iter_num) and (
                    state.iter_num != start or evaluates_start or state.iter_num == cfg.runtime.max_iters
                )
                if evaluates or cfg.runtime.eval_only:
                    clock.pause()  # evaluating and saving is not training throughput
                    check_point(loop)  # never evaluate and save the weights of a non-finite step
                    last_eval = state.last_eval = evaluate(loop)
                    if loop.sink is not None:
                        loop.sink.log_eval(state.iter_num, last_eval)
                    if cfg.runtime.eval_only:
                        break
                    maybe_save(loop, state, last_eval["val"])
                evaluate_tasks(loop, clock, state.iter_num)  # [train.eval]: lm-eval tasks every N steps
                if state.iter_num >= cfg.runtime.max_iters:
                    break
                signum = loop.agreed_stop if dist.is_distributed else (stop.signum or 0)
                if signum:
                    raise stopped(loop, state, signum, saved_now=evaluates)
                lr = learning_rate(state.iter_num, cfg.optim.learning_rate, cfg.schedule)
                set_learning_rate(loop.optimizer, lr, cfg.optim)
                clock.start()
                loss, grad_norm = train_step(loop)
                clock.count(loop.tokens_per_step)
                loop.guard.record(state.iter_num, loss, grad_norm, lr)
                if state.iter_num % cfg.runtime.log_interval == 0:
                    window = clock.lap()  # syncs the device: the window holds the work of its steps
                    check_point(loop)
                    loss_value = all_reduce_mean(dist, loss).item()  # every rank joins the mean
                    stats = StepStats(
                        iter_num=state.iter_num,
                        loss=loss_value,
                        lr=lr,
                        window=window,
                        flops_per_token=model_flops,
                        peak_flops=peak,
                    )
                    if not stats.mfu_known and cfg.runtime.peak_flops is None:
                        clock.pause()  # the probe ran slow (a busy machine): measure again, keep the larger
                        peak = max(peak, _measured_peak(runtime, again=True) * dist.world_size)
                        stats = replace(stats, peak_flops=peak)
                    if loop.sink is not None:
                        loop.sink.log_step(stats)
                if on_step is not None:
                    on_step(state.iter_num, loss)
                state.iter_num += 1
        finally:
            if loop.sink is not None:
                loop.sink.close()
        if dist.is_main:
            mode.finish(model, cfg.runtime.out_dir)
    return TrainResult(iter_num=state.iter_num, best_val_loss=state.best_val_loss, last_eval=last_eval)


@contextlib.contextmanager
def run_guard(cfg: TrainConfig, dist: DistInfo, runtime: Runtime) -> Generator[StopRequest]:
    """What holds for the whole run: the process group (opened and always closed; a dead peer
    becomes one error line), one writer per out_dir (rank 0 holds its lock), and stop signals."""
    out_dir = cfg.runtime.out_dir
    with contextlib.ExitStack() as held:
        held.enter_context(process_group(dist, runtime.device, cfg.runtime.dist_timeout_s))
        held.enter_context(translate_peer_failures(dist, "training"))
        if dist.is_main:
            ensure_writable(out_dir)
            held.enter_context(out_dir_lock(out_dir))
        if runtime.device_type == "cpu" and keep_freed_memory_for_reuse():
            log.debug("glibc malloc: large blocks come from the heap and freed memory is kept for reuse")
        yield held.enter_context(stop_signals())


def ensure_writable(out_dir: Path) -> None:
    """Fail before any work when checkpoints could not be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-probe."):
            pass
    except OSError as exc:
        raise CheckpointError(
            f"train.runtime.out_dir: {out_dir} cannot be written ({exc.strerror or type(exc).__name__})"
        ) from None


def load_resume_checkpoint(out_dir: Path) -> Checkpoint | None:
    path = out_dir / LAST_NAME
    if not path.exists():
        log.info("no %s in %s: starting a fresh run", LAST_NAME, out_dir)
        return None
    # A corrupt file raises here, before anything could overwrite it.
    return load_checkpoint(path)


def tidy_out_dir(out_dir: Path, checkpoint: Checkpoint | None) -> None:
    """Before a run writes into out_dir (rank 0, holding its lock, so no other writer is active):
    remove the temporary files of saves a kill cut short; on a fresh start keep an earlier run's
    ckpt_best.pt under a dated name (this run's first evaluation would replace it); on resume
    restore ckpt_best.pt when a kill between the two writes of a save (older versions wrote
    ckpt_last.pt first) left it behind ckpt_last.pt's best val loss."""
    for stale in sorted([*out_dir.rglob(".*.tmp"), *out_dir.rglob(".*.link")]):
        stale.unlink(missing_ok=True)
        log.info("removed %s (a save cut short by a kill)", stale)
    best = out_dir / BEST_NAME
    if not best.is_file():
        return
    if checkpoint is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(best.stat().st_mtime))
        kept = next(
            path
            for n in itertools.count()
            if not (path := best.with_name(f"ckpt_best.{stamp}{f'-{n}' if n else ''}.pt")).exists()
        )
        os.replace(best, kept)
        log.warning("fresh run in %s: the earlier run's %s is kept as %s", out_dir, BEST_NAME, kept.name)
    elif checkpoint.best_val_loss < load_checkpoint(best).best_val_loss:
        copy_checkpoint(out_dir / LAST_NAME, best)
        log.warning(
            "%s was behind %s (a save cut short): restored from it (val loss %.4f)",
            BEST_NAME,
            LAST_NAME,
            checkpoint.best_val_loss,
        )


def check_same_dataset(checkpoint: Checkpoint, meta: DatasetMeta, cfg: TrainConfig) -> None:
    """A resume continues on the data it was trained on: the same tokenizer, token counts and
    hashes (where both record them); another dataset in dataset_dir would be trained on silently
    remapped ids."""
    if checkpoint.dataset_meta is None:
        return
    where = cfg.runtime.out_dir / LAST_NAME
    saved = DatasetMeta.from_dict(checkpoint.dataset_meta, where=f"{where}: dataset_meta")
    difference = identity_difference(saved, meta, a_name=str(where), b_name=str(cfg.data.meta_path))
    if difference:
        raise DataError(
            f"{difference}; resume on the dataset it was trained on, or start fresh in another train.runtime.out_dir"
        )


@dataclass(slots=True, kw_only=True)
class LoopContext:
    """Everything the steps of one run share."""

    cfg: TrainConfig
    parallel: Parallel
    mode: Mode
    batches: BatchSource
    runtime: Runtime
    dist: DistInfo
    grad_accum_steps: int  # per rank; see grad_accum_steps_for
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dataset_meta: dict[str, Any] | None
    token_bytes: Tensor | None  # (vocab,) UTF-8 bytes per id of the dataset's tokenizer, for bits per byte
    sink: MetricsSink | None
    guard: NonFiniteGuard
    stop: StopRequest
    # The stop signal all ranks agreed on at the last log or evaluation step (0: none).
    agreed_stop: int = 0

    @property
    def model(self) -> GPT:
        return self.parallel.model

    @property
    def out_dir(self) -> Path:
        return self.cfg.runtime.out_dir

    @property
    def tokens_per_step(self) -> int:
        data = self.cfg.data
        return data.batch_size * data.block_size * self.grad_accum_steps * self.dist.world_size


def build_loop(
    cfg: TrainConfig,
    parallel: Parallel,
    batches: BatchSource,
    runtime: Runtime,
    *,
    dist: DistInfo,
    mode: Mode | None = None,
    dataset_meta: dict[str, Any] | None,
    stop: StopRequest | None = None,
) -> LoopContext:
    """Optimizer and grad scaler for the model's trainable parameters; the metrics sink is opened by
    `train`. `stop` is set by signal handlers; without one the loop never stops early."""
    model = parallel.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    return LoopContext(
        cfg=cfg,
        parallel=parallel,
        mode=Mode() if mode is None else mode,
        batches=batches,
        runtime=runtime,
        dist=dist,
        grad_accum_steps=grad_accum_steps_for(cfg.data, dist.world_size),
        optimizer=build_optimizer(trainable, cfg.optim, runtime.device_type, hidden_matrices=block_matrices(model)),
        scaler=torch.amp.GradScaler(runtime.device_type, enabled=runtime.uses_grad_scaler),
        dataset_meta=dataset_meta,
        token_bytes=None
        if dataset_meta is None
        else token_bytes_of(tokenizer_from_meta(DatasetMeta.from_dict(dataset_meta)), runtime.device),
        sink=None,
        guard=NonFiniteGuard(runtime.device),
        stop=stop if stop is not None else StopRequest(),
    )


def log_run(loop: LoopContext) -> None:
    cfg, dist = loop.cfg, loop.dist
    log.info(
        "training on %s (%s), %d rank(s)%s, global batch %d = batch_size %d x grad_accum_steps %d x %d rank(s), "
        "%d tokens per step, out_dir %s (pid %d)",
        loop.runtime.device,
        loop.runtime.dtype,
        dist.world_size,
        f" ({loop.parallel.kind})" if dist.is_distributed else "",
        cfg.data.batch_size * loop.grad_accum_steps * dist.world_size,
        cfg.data.batch_size,
        loop.grad_accum_steps,
        dist.world_size,
        loop.tokens_per_step,
        cfg.runtime.out_dir,
        os.getpid(),
    )


def is_eval_step(cfg: TrainConfig, iter_num: int) -> bool:
    return iter_num % cfg.runtime.eval_interval == 0 or iter_num == cfg.runtime.max_iters


def train_step(loop: LoopContext) -> tuple[Tensor, Tensor | None]:
    """One optimizer step over grad_accum_steps micro-batches; returns the mean loss (detached) and
    the gradient norm before clipping (None under a grad scaler, which skips non-finite steps itself)."""
    accum = loop.grad_accum_steps
    total = torch.zeros((), device=loop.runtime.device)
    x, y = loop.batches.get_batch("train")  # prefetched during the previous step, if there was one
    for micro in range(accum):
        with loop.parallel.grad_sync(micro == accum - 1):
            with loop.runtime.autocast():
                loss = loop.parallel.loss(x, y) / accum
            # The forward pass is queued on the device: read and copy the next micro-batch (after the
            # last one, the next step's first) while it runs, so the device never waits for data.
            loop.batches.prefetch("train")
            scaled: Tensor = loop.scaler.scale(loss)
            torch.autograd.backward(scaled)
        total += loss.detach().float()
        if micro < accum - 1:
            x, y = loop.batches.get_batch("train")
    norm = clip_gradients(loop)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    return total, norm


def clip_gradients(loop: LoopContext) -> Tensor | None:
    """Clip to grad_clip (when > 0) and return the total norm before clipping, on the device; None
    under a grad scaler, whose step skips inf/NaN gradients itself."""
    params = [p for p in loop.model.parameters() if p.requires_grad]
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
    if loop.parallel.kind == "fsdp":  # a sharded norm; imported here: DTensor's import costs every run ~0.5 s
        from torch.distributed.tensor import DTensor

        return norm.full_tensor() if isinstance(norm, DTensor) else norm
    return norm


# An evaluation forward takes several eval batches at once while it stays within these bounds (a
# few large forwards are much faster than many small ones, above all on a CPU).
EVAL_TOKENS_PER_FORWARD = 16384
EVAL_LOGITS_BYTES_PER_FORWARD = 64 * 2**20


def eval_batches_per_forward(loop: LoopContext) -> int:
    """How many eval batches one forward takes: 1 under torch.compile (the training shape, so no
    graph is compiled for another), else as many as the token and logits bounds allow."""
    if loop.cfg.runtime.compile:
        return 1
    tokens = loop.batches.shape.batch_size * loop.batches.shape.block_size
    logits_bytes = tokens * loop.model.config.vocab_size * 4
    return max(1, min(EVAL_TOKENS_PER_FORWARD // tokens, EVAL_LOGITS_BYTES_PER_FORWARD // logits_bytes))


@torch.no_grad()
def evaluate(loop: LoopContext) -> dict[str, float]:
    """Mean loss over eval_iters fixed batches of each split (model in eval mode), over all ranks,
    and in bits per byte ("train_bpb", "val_bpb") when the dataset's tokenizer is known.
    Batches of equal size: the mean of per-forward means weighted by their batch counts."""
    loop.model.train(False)
    per_forward = eval_batches_per_forward(loop)
    losses: dict[str, float] = {}
    for split in ("train", "val"):
        batches = list(loop.batches.eval_batches(split, loop.cfg.runtime.eval_iters))
        total = torch.zeros((), dtype=torch.float64, device=loop.runtime.device)
        text_bytes = torch.zeros((), dtype=torch.float64, device=loop.runtime.device)
        for first in range(0, len(batches), per_forward):
            part = batches[first : first + per_forward]
            x, y = torch.cat([x for x, _ in part]), torch.cat([y for _, y in part])  # (k*B, T)
            with loop.runtime.autocast():
                total += loop.parallel.loss(x, y).double() * len(part)
            if loop.token_bytes is not None:
                text_bytes += loop.token_bytes[y].sum()
        losses[split] = all_reduce_mean(loop.dist, total / len(batches)).item()
        if loop.token_bytes is not None:
            targets = sum(y.numel() for _, y in batches)
            losses[f"{split}_bpb"] = bits_per_byte(
                losses[split], all_reduce_mean(loop.dist, text_bytes / targets).item()
            )
    loop.model.train(True)
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
        model=loop.mode.saved_weights(loop.parallel.state_dict()),
        arch=loop.model.config,
        optimizer=loop.parallel.optimizer_state(loop.optimizer),
        scaler=loop.scaler.state_dict() if loop.scaler.is_enabled() else None,
        iter_num=state.iter_num,
        best_val_loss=state.best_val_loss,
        evaluation=state.last_eval,
        config=_CONFIG_ADAPTER.dump_python(loop.cfg, mode="json"),
        rng=rng_state(),
        data_state=loop.batches.state_dict(),
        dataset_meta=loop.dataset_meta,
        extra=loop.mode.extra_state(),
        rank_states=rank_states,
    )


def maybe_save(loop: LoopContext, state: TrainState, val_loss: float) -> None:
    """ckpt_last.pt at every eval; ckpt_best.pt when val improves or always_save_checkpoint.

    Rank 0 writes; every rank (all hold the same all-reduced val loss) waits until it is done."""
    improved = val_loss < state.best_val_loss
    if improved:
        state.best_val_loss = val_loss
    save(loop, state, best=improved or loop.cfg.runtime.always_save_checkpoint)


def save(loop: LoopContext, state: TrainState, *, best: bool) -> None:
    """ckpt_last.pt (and ckpt_best.pt, the same bytes, when `best`); rank 0 writes, all ranks wait."""
    checkpoint = build_checkpoint(loop, state)
    if loop.dist.is_main:
        if loop.sink is not None:
            loop.sink.flush()  # events up to this checkpoint survive a kill
        # ckpt_best.pt first, then ckpt_last.pt as the same bytes (linked, or copied; not serialized
        # twice): a kill between the two leaves ckpt_last.pt one evaluation behind, which a resume
        # repeats, never a best val loss recorded without its model.
        save_checkpoint(loop.out_dir / (BEST_NAME if best else LAST_NAME), checkpoint)
        if best:
            copy_checkpoint(loop.out_dir / BEST_NAME, loop.out_dir / LAST_NAME)
        log.info("saved %s%s at iter %d", LAST_NAME, f" and {BEST_NAME}" if best else "", state.iter_num)
        loop.mode.after_save(loop.model, loop.out_dir, best)
    barrier(loop.dist)


def resume(loop: LoopContext, checkpoint: Checkpoint) -> TrainState:
    """Restore weights, optimizer, scaler, data position and RNG; continue at iter_num.

    Each rank restores its own RNG and data position when the world size is the one the
    checkpoint was written with; with another world size only weights, optimizer and step
    resume (the data order changes, and a warning says so)."""
    where = loop.out_dir / LAST_NAME
    expected = loop.mode.saved_weights(loop.model.state_dict())
    mismatch = weights_mismatch(checkpoint.model, expected)
    if mismatch:
        raise CheckpointError(f"{where}: weights do not fit this run's model: {mismatch}")
    loop.parallel.load_state_dict(checkpoint.model)  # the names and shapes are checked: a subset may load
    if checkpoint.optimizer is None:
        raise CheckpointError(f"{where}: has no optimizer state to resume from")
    try:
        loop.parallel.load_optimizer_state(loop.optimizer, checkpoint.optimizer)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if checkpoint.scaler is not None and loop.scaler.is_enabled():
        loop.scaler.load_state_dict(checkpoint.scaler)
    rng, data_state = _own_rank_state(loop, checkpoint)
    if data_state is not None:
        loop.batches.load_state_dict(data_state)
    if rng is not None:
        set_rng_state(rng)
    log.info("resuming from %s at iter %d (best val loss %.4f)", where, checkpoint.iter_num, checkpoint.best_val_loss)
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


def _measured_peak(runtime: Runtime, *, again: bool = False) -> float:
    cache = peak_cache_file()
    peak = peak_flops(runtime.device, runtime.torch_dtype, cache, again=again)
    log.info(
        "peak for MFU: %.1f GFLOP/s (%s matmul probe on %s, kept in %s)",
        peak / 1e9,
        runtime.dtype,
        runtime.device,
        cache,
    )
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


def stopped(loop: LoopContext, state: TrainState, signum: int, saved_now: bool) -> TrainingStoppedError:
    """ckpt_last.pt at the step a stop signal ended (unless this step's evaluation just saved it);
    ckpt_best.pt stays as it is."""
    if not saved_now:
        check_point(loop)
        save(loop, state, best=False)
    return TrainingStoppedError(
        f"{signal.Signals(signum).name} at iter {state.iter_num}: saved {loop.out_dir / LAST_NAME}; "
        "the same command resumes from there",
        signum,
    )
