"""Full finetuning from pretrained weights ([train.model] init_from, nanoGPT's name) as a mode of
the one run path: `run_pretrained(cfg)` is `train.run.run(cfg, pretrained_target)`.

Every weight of the source trains with the native loop (accumulation, schedule, clipping,
TensorBoard, DDP/FSDP, exact resume); the architecture is the source's. `ckpt_last.pt` in
out_dir wins over init_from: a resumed run never reads the source again.
"""

from __future__ import annotations

import logging

from ml_playground.config import TrainConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import CheckpointError
from ml_playground.interop.source import Source, finetune_architecture, load_source
from ml_playground.model import GPT
from ml_playground.train.checkpoint import LAST_NAME
from ml_playground.train.loop import TrainResult
from ml_playground.train.run import RunContext, resumed_architecture, run, target_of
from ml_playground.train.targets import GPTTarget

log = logging.getLogger(__name__)


def pretrained_target(ctx: RunContext) -> GPTTarget:
    """The source's GPT with its weights, or, on resume, the checkpoint's architecture (the loop
    restores the checkpoint's weights into it)."""
    init_from = ctx.cfg.model.init_from
    if ctx.checkpoint is not None:
        log.info("resuming from %s in %s: init_from %r is not read", LAST_NAME, ctx.cfg.runtime.out_dir, init_from)
        return target_of(ctx, GPT(resumed_architecture(ctx.cfg, ctx.meta, ctx.checkpoint)))
    model = source_model(ctx.cfg, ctx.meta, load_source(init_from, "train.model.init_from"))
    log.info("init_from %r: every weight of the source trains", init_from)
    return target_of(ctx, model)


def source_model(cfg: TrainConfig, meta: DatasetMeta, source: Source) -> GPT:
    """The GPT of `source` with its weights, as [train] finetunes it on the dataset of `meta`."""
    model = GPT(finetune_architecture(cfg, meta, source))
    try:
        model.load_state_dict(source.state_dict)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"train.model.init_from = {source.name!r}: weights do not fit its architecture ({detail})"
        ) from None
    return model


def run_pretrained(cfg: TrainConfig) -> TrainResult:
    """`make train` with [train.model] init_from: finetune every weight of the source."""
    return run(cfg, pretrained_target)
