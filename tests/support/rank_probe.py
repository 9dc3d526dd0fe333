"""`python -m tests.support.rank_probe CONFIG OUT_DIR` under torchrun: what each rank's run drew.

Trains [train] of CONFIG through `train` (the one training loop) with the default mode, and writes
OUT_DIR/rank<r>.json holding:
- weights_sha256: the model's weights as this rank built them, before DDP broadcasts rank 0's
  (so equal digests mean every rank initialized the same weights by itself);
- first_dropout_mask: which activations the embedding dropout zeroed in the first training
  forward, as a string of 0/1 (the mask depends only on the rank's RNG stream, not its data).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, cast

from torch import Tensor, nn

from ml_playground.config_loader import load_experiment_config, require
from ml_playground.model import GPT
from ml_playground.train.loop import train
from ml_playground.train.modes import Mode, Start


def weights_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(config: Path, out_dir: Path) -> None:
    cfg = require(load_experiment_config(config).train, config, "train")
    record: dict[str, Any] = {}

    def on_dropout(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        if module.training and "first_dropout_mask" not in record:
            zeroed = (output == 0) & (args[0] != 0)  # (B, T, C)
            bits = cast("list[bool]", zeroed.flatten().tolist())
            record["first_dropout_mask"] = "".join("1" if bit else "0" for bit in bits)

    class Probe(Mode):
        def build(self, start: Start) -> GPT:
            model = super().build(start)
            record["weights_sha256"] = weights_sha256(model)
            model.transformer["drop"].register_forward_hook(on_dropout)
            return model

    train(cfg, Probe())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
