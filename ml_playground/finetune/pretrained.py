"""Full finetuning from pretrained weights ([train.model] init_from, nanoGPT's name) as a mode of
the one loop: `train.loop.train(cfg, Pretrained())`.

Every weight of the source trains with the loop (accumulation, schedule, clipping, TensorBoard,
DDP/FSDP, exact resume); the architecture is the source's. `ckpt_last.pt` in out_dir wins over
init_from: a resumed run never reads the source again.
"""

from __future__ import annotations

import logging

from ml_playground.config import TrainConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import CheckpointError, summary
from ml_playground.interop.source import Source, finetune_architecture, load_source
from ml_playground.model import GPT
from ml_playground.train.checkpoint import LAST_NAME
from ml_playground.train.modes import Mode, Start, resumed_architecture

log = logging.getLogger(__name__)


class Pretrained(Mode):
    """The `init_from` source's GPT with its weights; on resume the checkpoint's architecture (the
    loop restores the checkpoint's weights into it)."""

    def build(self, start: Start) -> GPT:
        cfg, init_from = start.cfg, start.cfg.model.init_from
        if start.checkpoint is not None:
            log.info("resuming from %s in %s: init_from %r is not read", LAST_NAME, cfg.runtime.out_dir, init_from)
            return GPT(resumed_architecture(cfg, start.meta, start.checkpoint))
        model = source_model(cfg, start.meta, load_source(init_from, "train.model.init_from"))
        log.info("init_from %r: every weight of the source trains", init_from)
        return model


def source_model(cfg: TrainConfig, meta: DatasetMeta, source: Source) -> GPT:
    """The GPT of `source` with its weights, as [train] finetunes it on the dataset of `meta`."""
    model = GPT(finetune_architecture(cfg, meta, source))
    try:
        source.load_into(model)
    except RuntimeError as exc:
        raise CheckpointError(
            f"train.model.init_from = {source.name!r}: weights do not fit its architecture ({summary(exc)})"
        ) from None
    return model
