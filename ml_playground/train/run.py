"""The one run entry point: every training mode (GPT from scratch, LoRA, the benchmark) calls `run`.

`run` owns, once: the torchrun environment, the process group (opened and always closed), the
runtime (device, dtype), logging per rank, the out_dir lock (one writer per out_dir, held by rank
0), stop signals (SIGTERM/SIGINT/SIGHUP save and stop, faults.py), seeding (the same initial
weights on every rank, a dropout stream per rank), the dataset metadata, the resume checkpoint
(`ckpt_last.pt`), the batch source and `fit`. A mode supplies only how to build its
`TrainingTarget` from a `RunContext`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_playground.config import TrainConfig
from ml_playground.data.batches import BatchSource
from ml_playground.data.checks import check_dataset
from ml_playground.data.meta import DatasetMeta, read_meta
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.model import GPT, GPTConfig
from ml_playground.runtime import Runtime, resolve_runtime, seed_everything
from ml_playground.train.checkpoint import ARCH_OPTION_KEYS, LAST_NAME, MODEL_ARG_KEYS, Checkpoint, load_checkpoint
from ml_playground.train.distributed import (
    DistInfo,
    dist_info_from_env,
    grad_accum_steps_for,
    process_group,
    translate_peer_failures,
)
from ml_playground.train.faults import StopRequest, stop_signals
from ml_playground.train.lock import out_dir_lock
from ml_playground.train.loop import StepCallback, TrainResult, fit
from ml_playground.train.targets import GPTTarget, Parallel, TrainingTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """What a mode may read to build its target (the run set it up)."""

    cfg: TrainConfig
    dist: DistInfo
    runtime: Runtime
    meta: DatasetMeta
    # ckpt_last.pt of out_dir when the run resumes; `fit` restores it into the target.
    checkpoint: Checkpoint | None

    @property
    def parallel(self) -> Parallel:
        return self.cfg.runtime.parallel if self.dist.is_distributed else "none"


BuildTarget = Callable[[RunContext], TrainingTarget]


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


def run(cfg: TrainConfig, build_target: BuildTarget, *, on_step: StepCallback | None = None) -> TrainResult:
    """Set up a run from [train], build its target, `fit` it; auto-resumes from ckpt_last.pt.

    Under torchrun every rank runs this; it opens (and always closes) the process group.
    `on_step` is called after every optimizer step (see `StepCallback`)."""
    dist = dist_info_from_env()
    grad_accum_steps_for(cfg.data, dist.world_size)  # a global batch that does not divide fails first
    runtime = resolve_runtime(cfg.runtime.device, cfg.runtime.dtype, dist.local_rank if dist.is_distributed else None)
    if not dist.is_main:
        logging.getLogger("ml_playground").setLevel(logging.WARNING)  # rank 0 tells the story
    with process_group(dist, runtime.device, cfg.runtime.dist_timeout_s), translate_peer_failures(dist, "training"):
        return _run(cfg, build_target, dist, runtime, on_step)


def _run(
    cfg: TrainConfig, build_target: BuildTarget, dist: DistInfo, runtime: Runtime, on_step: StepCallback | None
) -> TrainResult:
    out_dir = cfg.runtime.out_dir
    with contextlib.ExitStack() as held:
        if dist.is_main:  # one writer per out_dir: rank 0 writes for all ranks
            ensure_writable(out_dir)
            held.enter_context(out_dir_lock(out_dir))
        stop = held.enter_context(stop_signals())
        return _set_up_and_fit(cfg, build_target, dist, runtime, stop, on_step)


def _set_up_and_fit(
    cfg: TrainConfig,
    build_target: BuildTarget,
    dist: DistInfo,
    runtime: Runtime,
    stop: StopRequest,
    on_step: StepCallback | None,
) -> TrainResult:
    out_dir = cfg.runtime.out_dir
    meta = read_meta(cfg.data.meta_path)
    check_dataset(cfg.data, meta)
    checkpoint = load_resume_checkpoint(out_dir)
    ctx = RunContext(cfg=cfg, dist=dist, runtime=runtime, meta=meta, checkpoint=checkpoint)
    # The same initial weights on every rank (FSDP shards them as they are; DDP would broadcast
    # rank 0's anyway), then a different dropout stream per rank.
    seed_everything(cfg.runtime.seed)
    target = build_target(ctx)
    if dist.rank != 0:
        seed_everything(cfg.runtime.seed + dist.rank)
    batches = BatchSource.for_run(cfg, meta.numpy_dtype, runtime.device, rank=dist.rank, world_size=dist.world_size)
    _log_run(ctx)
    result = fit(
        cfg,
        target,
        batches,
        runtime,
        dist=dist,
        dataset_meta=meta.to_dict(),
        resume_from=checkpoint,
        stop=stop,
        on_step=on_step,
    )
    if dist.is_main:
        target.on_finish(out_dir)
    return result


def _log_run(ctx: RunContext) -> None:
    cfg, dist = ctx.cfg, ctx.dist
    accum = grad_accum_steps_for(cfg.data, dist.world_size)
    log.info(
        "training on %s (%s), %d rank(s)%s, global batch %d = batch_size %d x grad_accum_steps %d x %d rank(s), "
        "%d tokens per step, out_dir %s (pid %d)",
        ctx.runtime.device,
        ctx.runtime.dtype,
        dist.world_size,
        f" ({ctx.parallel})" if dist.is_distributed else "",
        cfg.data.batch_size * accum * dist.world_size,
        cfg.data.batch_size,
        accum,
        dist.world_size,
        cfg.data.batch_size * cfg.data.block_size * accum * dist.world_size,
        cfg.runtime.out_dir,
        os.getpid(),
    )


def padded_vocab_size(size: int, multiple: int) -> int:
    """`size` rounded up to a multiple of `multiple` (GPT-2's 50257 -> 50304 with 64)."""
    return -(-size // multiple) * multiple


def _resolved(config: GPTConfig) -> dict[str, Any]:
    """Every architecture key with its value as the model has it (key/value heads and MLP width as
    numbers, never None), for comparing two architectures in a message."""
    values = {key: getattr(config, key) for key in MODEL_ARG_KEYS + ARCH_OPTION_KEYS}
    return values | {"n_kv_head": config.kv_heads, "mlp_hidden": config.hidden_size}


def resolve_architecture(cfg: TrainConfig, meta: DatasetMeta, checkpoint: Checkpoint | None) -> GPTConfig:
    """TOML [train.model] (+ vocab size from the dataset), overridden by a resumed checkpoint.

    The dataset's ids are the tokens; embedding rows past them (padding to `vocab_multiple`, or an
    explicit larger `vocab_size`) are masked in the model."""
    model = cfg.model
    vocab_size = model.vocab_size if model.vocab_size is not None else meta.vocab_size
    if vocab_size < meta.vocab_size:
        raise ConfigError(
            f"train.model.vocab_size: {vocab_size} is smaller than the dataset's vocabulary ({meta.vocab_size})"
        )
    toml_arch = (
        GPTConfig(
            n_layer=model.n_layer,
            n_head=model.n_head,
            n_embd=model.n_embd,
            block_size=model.block_size,
            bias=model.bias,
            vocab_size=padded_vocab_size(vocab_size, model.vocab_multiple),
            dropout=model.dropout,
            position=model.position,
            rope_theta=model.rope_theta,
            norm=model.norm,
            norm_eps=model.norm_eps,
            mlp=model.mlp,
            mlp_hidden=model.hidden_size,
            qk_norm=model.qk_norm,
            n_kv_head=model.n_kv_head,
            tie_embeddings=model.tie_embeddings,
            logit_softcap=model.logit_softcap,
        )
        .canonical()
        .with_real_vocab(meta.vocab_size)
    )
    if checkpoint is None:
        return toml_arch
    theirs, ours = _resolved(checkpoint.arch), _resolved(toml_arch)
    differences = [f"{key}={theirs[key]!r} (TOML {ours[key]!r})" for key in theirs if theirs[key] != ours[key]]
    if differences:
        log.warning("checkpoint model_args take precedence over TOML: %s", ", ".join(differences))
    return resumed_architecture(cfg, meta, checkpoint)


def resumed_architecture(cfg: TrainConfig, meta: DatasetMeta, checkpoint: Checkpoint) -> GPTConfig:
    """The resumed checkpoint's architecture, if the run's context and dataset fit it."""
    arch = checkpoint.arch
    if cfg.data.block_size > arch.block_size:
        raise ConfigError(
            f"train.data.block_size: {cfg.data.block_size} exceeds the checkpoint's block_size {arch.block_size}"
        )
    if arch.real_vocab < meta.vocab_size:
        raise CheckpointError(
            f"checkpoint vocabulary ({arch.real_vocab} tokens) is smaller than the dataset's ({meta.vocab_size})"
        )
    return arch


def gpt_target(ctx: RunContext) -> GPTTarget:
    """The GPT of [train.model] (or of the resumed checkpoint) on the run's device."""
    if ctx.cfg.model.init_from != "scratch":
        raise ConfigError(
            f"train.model.init_from = {ctx.cfg.model.init_from!r}: pretrained weights are loaded by "
            "finetune.pretrained.run_pretrained (as `ml_playground train` does), not by run_training"
        )
    return target_of(ctx, GPT(resolve_architecture(ctx.cfg, ctx.meta, ctx.checkpoint)))


def target_of(ctx: RunContext, model: GPT) -> GPTTarget:
    """`model` on the run's device, as the loop trains it (compiled, DDP/FSDP as configured)."""
    model = model.to(ctx.runtime.device)
    log.info("model: %.2fM parameters (without position embeddings)", model.num_params() / 1e6)
    return GPTTarget(model, compile=ctx.cfg.runtime.compile, parallel=ctx.parallel)


def run_training(cfg: TrainConfig) -> TrainResult:
    """`make train`: GPT from [train.model] on the prepared dataset; auto-resumes ckpt_last.pt."""
    return run(cfg, gpt_target)
