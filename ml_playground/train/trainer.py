"""The training loop, shared by GPT training and HF+PEFT finetuning through `TrainingTarget`.

`run_training` builds a GPT target from [train] and calls `fit`; the finetuner builds its own
target and calls the same `fit`. One loop: warmup+cosine LR, gradient accumulation, clipping,
eval every `eval_interval` steps, `ckpt_last.pt` at every eval, `ckpt_best.pt` when val loss
improves (or always with `always_save_checkpoint`), auto-resume from `ckpt_last.pt`.

Exact resume: a checkpoint is taken right after an evaluation, before the step with the same
number; it holds model, optimizer, scaler, every RNG state and the batch source's position.
Evaluation draws from its own fixed batch stream and uses no dropout, so it does not move any
state the next training step reads. Resuming restores all of it and continues with that step.

Under torchrun (see distributed.py) the same loop runs on every rank: the target syncs gradients
on the last micro-step only, each rank draws its own data, losses are averaged over ranks, rank 0
alone logs and writes the checkpoint (holding every rank's RNG and data position) while the
others wait for it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import TypeAdapter
from torch import Tensor, nn

from ml_playground.config import TrainConfig
from ml_playground.data.batches import BatchSource
from ml_playground.data.meta import DatasetMeta, read_meta
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.model import GPT, ModelOutput
from ml_playground.runtime import (
    Runtime,
    keep_freed_memory_for_reuse,
    resolve_runtime,
    rng_state,
    seed_everything,
    set_rng_state,
)
from ml_playground.train.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    MODEL_ARG_KEYS,
    Checkpoint,
    copy_checkpoint,
    gpt_config_from_args,
    load_checkpoint,
    model_args_of,
    save_checkpoint,
)
from ml_playground.train.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    dist_info_from_env,
    fsdp_grad_sync,
    fsdp_load_model_state,
    fsdp_load_optimizer_state,
    fsdp_model_state,
    fsdp_optimizer_state,
    grad_accum_steps_for,
    process_group,
    shard_fsdp,
    translate_peer_failures,
    wrap_ddp,
)
from ml_playground.train.metrics import (
    MetricsSink,
    StepStats,
    check_cpu_bfloat16,
    measure_peak_flops,
    palm_flops_per_token,
)
from ml_playground.train.optim import build_optimizer
from ml_playground.train.schedule import learning_rate

log = logging.getLogger(__name__)

_CONFIG_ADAPTER: TypeAdapter[TrainConfig] = TypeAdapter(TrainConfig)


class TrainingTarget(Protocol):
    """What the loop trains. The loop owns optimizer, schedule, precision, data and checkpoints."""

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def set_training(self, training: bool) -> None: ...

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean next-token loss of (B, T) inputs x and targets y (called under autocast)."""
        ...

    def grad_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        """Context for one micro-step's forward+backward (DDP: `no_sync` unless last)."""
        ...

    def model_state(self) -> dict[str, Tensor]:
        """Weights to checkpoint (without `_orig_mod.` prefixes)."""
        ...

    def load_model_state(self, state: dict[str, Tensor]) -> None: ...

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer.state_dict()`, or its full gather when parameters are sharded (FSDP)."""
        ...

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None: ...

    def model_args(self) -> dict[str, Any]:
        """nanoGPT-style architecture description stored as `model_args`."""
        ...

    def flops_per_token(self, context: int) -> float: ...

    def extra_state(self) -> dict[str, Any] | None:
        """Anything else a checkpoint must hold (e.g. adapter settings); JSON-like values."""
        ...

    def on_checkpoint(self, out_dir: Path, best: bool) -> None:
        """Called on rank 0 after each save (e.g. to write a PEFT adapter folder)."""
        ...


Parallel = Literal["none", "ddp", "fsdp"]


class GPTTarget:
    """The GPT of `model.py` as a training target; `compile` wraps the forward in torch.compile.

    parallel (needs an open process group): "ddp" wraps the model in DistributedDataParallel,
    "fsdp" shards it in place with fully_shard (each block, then the root)."""

    def __init__(self, model: GPT, *, compile: bool = False, parallel: Parallel = "none"):
        self.model = model
        self.parallel = parallel
        module: nn.Module = model
        if parallel == "ddp":
            module = self.ddp = wrap_ddp(model, model.wte.weight.device)
        elif parallel == "fsdp":
            shard_fsdp(model, list(model.blocks), model.wte.weight.device)
        self.forward: Callable[..., ModelOutput] = torch.compile(module) if compile else module

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        loss = self.forward(x, y).loss
        if loss is None:  # pragma: no cover - GPT returns a loss whenever targets are given
            raise RuntimeError("GPT returned no loss for given targets")
        return loss

    def grad_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        if self.parallel == "ddp" and not last_micro_step:
            return self.ddp.no_sync()
        if self.parallel == "fsdp":
            return fsdp_grad_sync(self.model, last_micro_step)
        return contextlib.nullcontext()

    def model_state(self) -> dict[str, Tensor]:
        if self.parallel == "fsdp":
            return fsdp_model_state(self.model)
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        if self.parallel == "fsdp":
            fsdp_load_model_state(self.model, state)
        else:
            self.model.load_state_dict(state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self.parallel == "fsdp":
            return fsdp_optimizer_state(self.model, optimizer)
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if not state.get("param_groups"):
            return  # an FSDP run saved before its first step: the fresh optimizer is that state
        by_name = any(isinstance(key, str) for key in state.get("state", {}))  # FSDP's full state
        if by_name != (self.parallel == "fsdp") and state.get("state"):
            raise CheckpointError(
                f"optimizer state was written by {'an FSDP' if by_name else 'a DDP or single-process'} run: "
                f"resume it with train.runtime.parallel = {'fsdp' if by_name else 'ddp'!r} under torchrun "
                "(the weights alone load anywhere)"
            )
        if self.parallel == "fsdp":
            fsdp_load_optimizer_state(self.model, optimizer, state)
        else:
            optimizer.load_state_dict(state)

    def model_args(self) -> dict[str, Any]:
        return model_args_of(self.model.config)

    def flops_per_token(self, context: int) -> float:
        config = self.model.config
        return palm_flops_per_token(
            n_params=self.model.num_params(),
            n_layer=config.n_layer,
            n_head=config.n_head,
            head_size=config.head_size,
            context=context,
        )

    def extra_state(self) -> dict[str, Any] | None:
        return None

    def on_checkpoint(self, out_dir: Path, best: bool) -> None:
        return None


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
class Loop:
    """Everything one run's steps share."""

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

    @property
    def out_dir(self) -> Path:
        return self.cfg.runtime.out_dir

    @property
    def tokens_per_step(self) -> int:
        data = self.cfg.data
        return data.batch_size * data.block_size * self.grad_accum_steps * self.dist.world_size


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


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(loop: Loop) -> Tensor:
    """One optimizer step over grad_accum_steps micro-batches; returns the mean loss (detached)."""
    accum = loop.grad_accum_steps
    total = torch.zeros((), device=loop.runtime.device)
    for micro in range(accum):
        x, y = loop.batches.get_batch("train")
        with loop.target.grad_sync(micro == accum - 1):
            with loop.runtime.autocast():
                loss = loop.target.loss(x, y) / accum
            scaled: Tensor = loop.scaler.scale(loss)
            torch.autograd.backward(scaled)
        total += loss.detach().float()
    if loop.cfg.optim.grad_clip > 0:
        loop.scaler.unscale_(loop.optimizer)
        nn.utils.clip_grad_norm_(loop.target.trainable_parameters(), loop.cfg.optim.grad_clip)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def evaluate(loop: Loop) -> dict[str, float]:
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


def build_checkpoint(loop: Loop, state: TrainState) -> Checkpoint:
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
        model_args=loop.target.model_args(),
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


def maybe_save(loop: Loop, state: TrainState, val_loss: float) -> None:
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


def resume(loop: Loop, checkpoint: Checkpoint) -> TrainState:
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


def _own_rank_state(loop: Loop, checkpoint: Checkpoint) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
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
) -> Loop:
    """Optimizer and grad scaler for `target`; the metrics sink is opened by `fit`."""
    return Loop(
        cfg=cfg,
        target=target,
        batches=batches,
        runtime=runtime,
        dist=dist,
        grad_accum_steps=grad_accum_steps_for(cfg.data, dist.world_size),
        optimizer=build_optimizer(target.trainable_parameters(), cfg.optim, runtime.device_type),
        scaler=torch.amp.GradScaler(runtime.device_type, enabled=runtime.uses_grad_scaler),
        dataset_meta=dataset_meta,
        sink=None,
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
) -> TrainResult:
    """Train `target` from [train]; resumes exactly from `resume_from` when given."""
    if runtime.device_type == "cpu" and keep_freed_memory_for_reuse():
        log.debug("glibc malloc: large blocks come from the heap and freed memory is kept for reuse")
    loop = build_loop(cfg, target, batches, runtime, dist=dist, dataset_meta=dataset_meta)
    state = TrainState() if resume_from is None else resume(loop, resume_from)
    start = state.iter_num
    if dist.is_main:
        loop.sink = MetricsSink(loop.out_dir, purge_step=start if resume_from is not None else None)
    try:
        return _run(loop, state, resumed=resume_from is not None, start=start)
    finally:
        if loop.sink is not None:
            loop.sink.close()


def _measured_peak(runtime: Runtime) -> float:
    peak = measure_peak_flops(runtime.device, runtime.torch_dtype)
    log.info("peak for MFU: %.1f GFLOP/s (%s matmul probe on %s)", peak / 1e9, runtime.dtype, runtime.device)
    if runtime.device_type == "cpu" and runtime.dtype == "bfloat16":
        check_cpu_bfloat16(peak, runtime.device)
    return peak


def _run(loop: Loop, state: TrainState, *, resumed: bool, start: int) -> TrainResult:
    cfg = loop.cfg
    if resumed and start >= cfg.runtime.max_iters and not cfg.runtime.eval_only:
        log.info("already at iter %d of max_iters %d: nothing to train", start, cfg.runtime.max_iters)
        return TrainResult(iter_num=start, best_val_loss=state.best_val_loss, last_eval=None)
    # MFU counts the tokens of all ranks, so it is measured against the peak of all devices.
    peak = (cfg.runtime.peak_flops or _measured_peak(loop.runtime)) * loop.dist.world_size
    flops_per_token = loop.target.flops_per_token(cfg.data.block_size)
    last_eval: dict[str, float] | None = None
    while True:
        # The eval at the resumed step already happened (and was saved) before the interruption.
        if _is_eval_step(cfg, state.iter_num) and (state.iter_num != start or not resumed or cfg.runtime.eval_only):
            last_eval = evaluate(loop)
            if loop.sink is not None:
                loop.sink.log_eval(state.iter_num, last_eval)
            if cfg.runtime.eval_only:
                break
            maybe_save(loop, state, last_eval["val"])
        if state.iter_num >= cfg.runtime.max_iters:
            break
        lr = learning_rate(state.iter_num, cfg.optim.learning_rate, cfg.schedule)
        set_learning_rate(loop.optimizer, lr)
        started = time.perf_counter()
        loss = train_step(loop)
        if state.iter_num % cfg.runtime.log_interval == 0:
            # Every rank joins the mean; it syncs the device, so only on log steps.
            loss_value = all_reduce_mean(loop.dist, loss).item()
            if loop.sink is not None:
                stats = StepStats(
                    iter_num=state.iter_num,
                    loss=loss_value,
                    lr=lr,
                    step_seconds=time.perf_counter() - started,
                    tokens=loop.tokens_per_step,
                    flops_per_token=flops_per_token,
                    peak_flops=peak,
                )
                loop.sink.log_step(stats)
        state.iter_num += 1
    return TrainResult(iter_num=state.iter_num, best_val_loss=state.best_val_loss, last_eval=last_eval)


def resolve_model_args(cfg: TrainConfig, meta: DatasetMeta, checkpoint: Checkpoint | None) -> dict[str, Any]:
    """TOML [train.model] (+ vocab size from the dataset), overridden by a resumed checkpoint."""
    model = cfg.model
    vocab_size = model.vocab_size if model.vocab_size is not None else meta.vocab_size
    if vocab_size < meta.vocab_size:
        raise ConfigError(
            f"train.model.vocab_size: {vocab_size} is smaller than the dataset's vocabulary ({meta.vocab_size})"
        )
    toml_args: dict[str, Any] = {
        "n_layer": model.n_layer,
        "n_head": model.n_head,
        "n_embd": model.n_embd,
        "block_size": model.block_size,
        "bias": model.bias,
        "vocab_size": vocab_size,
        "dropout": model.dropout,
    }
    if checkpoint is None:
        return toml_args
    differences = [
        f"{key}={checkpoint.model_args[key]!r} (TOML {toml_args[key]!r})"
        for key in MODEL_ARG_KEYS
        if checkpoint.model_args[key] != toml_args[key]
    ]
    if differences:
        log.warning("checkpoint model_args take precedence over TOML: %s", ", ".join(differences))
    args = dict(checkpoint.model_args)
    if cfg.data.block_size > int(args["block_size"]):
        raise ConfigError(
            f"train.data.block_size: {cfg.data.block_size} exceeds the checkpoint's block_size {args['block_size']}"
        )
    if int(args["vocab_size"]) < meta.vocab_size:
        raise CheckpointError(
            f"checkpoint vocab_size {args['vocab_size']} is smaller than the dataset's ({meta.vocab_size})"
        )
    return args


def _load_resume_checkpoint(out_dir: Path) -> Checkpoint | None:
    path = out_dir / LAST_NAME
    if not path.exists():
        log.info("no %s in %s: starting a fresh run", LAST_NAME, out_dir)
        return None
    # A corrupt file raises here, before anything could overwrite it.
    return load_checkpoint(path)


def run_training(cfg: TrainConfig) -> TrainResult:
    """`make train`: GPT from [train.model] on the prepared dataset; auto-resumes ckpt_last.pt.

    Under torchrun every rank runs this; it opens (and always closes) the process group."""
    dist = dist_info_from_env()
    grad_accum_steps_for(cfg.data, dist.world_size)  # a global batch that does not divide fails first
    runtime = resolve_runtime(cfg.runtime.device, cfg.runtime.dtype, dist.local_rank if dist.is_distributed else None)
    if not dist.is_main:
        logging.getLogger("ml_playground").setLevel(logging.WARNING)  # rank 0 tells the story
    with process_group(dist, runtime.device, cfg.runtime.dist_timeout_s), translate_peer_failures(dist, "training"):
        return _train_gpt(cfg, dist, runtime)


def _train_gpt(cfg: TrainConfig, dist: DistInfo, runtime: Runtime) -> TrainResult:
    out_dir = cfg.runtime.out_dir
    if dist.is_main:
        ensure_writable(out_dir)
    meta = read_meta(cfg.data.meta_path)
    checkpoint = _load_resume_checkpoint(out_dir)
    model_args = resolve_model_args(cfg, meta, checkpoint)
    # The same initial weights on every rank (FSDP shards them as they are; DDP would broadcast
    # rank 0's anyway), then a different dropout stream per rank.
    seed_everything(cfg.runtime.seed)
    model = GPT(gpt_config_from_args(model_args)).to(runtime.device)
    if dist.rank != 0:
        seed_everything(cfg.runtime.seed + dist.rank)
    log.info("model: %.2fM parameters (without position embeddings)", model.num_params() / 1e6)
    batches = BatchSource.for_run(cfg, meta.numpy_dtype, runtime.device, rank=dist.rank, world_size=dist.world_size)
    parallel: Parallel = cfg.runtime.parallel if dist.is_distributed else "none"
    target = GPTTarget(model, compile=cfg.runtime.compile, parallel=parallel)
    accum = grad_accum_steps_for(cfg.data, dist.world_size)
    log.info(
        "training on %s (%s), %d rank(s)%s, global batch %d = batch_size %d x grad_accum_steps %d x %d rank(s), "
        "%d tokens per step, out_dir %s (pid %d)",
        runtime.device,
        runtime.dtype,
        dist.world_size,
        f" ({parallel})" if dist.is_distributed else "",
        cfg.data.batch_size * accum * dist.world_size,
        cfg.data.batch_size,
        accum,
        dist.world_size,
        cfg.data.batch_size * cfg.data.block_size * accum * dist.world_size,
        out_dir,
        os.getpid(),
    )
    return fit(cfg, target, batches, runtime, dist=dist, dataset_meta=meta.to_dict(), resume_from=checkpoint)
