"""Placeholder until its engineer lands the real module (keeps cli.py type-checked meanwhile)."""

from __future__ import annotations

from ml_playground.config import TrainConfig
from ml_playground.errors import MLPlaygroundError


def run_training(cfg: TrainConfig) -> None:
    raise MLPlaygroundError("training is not built yet")
