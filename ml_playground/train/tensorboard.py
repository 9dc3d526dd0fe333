"""Placeholder until its engineer lands the real module (keeps cli.py type-checked meanwhile)."""

from __future__ import annotations

from pathlib import Path

from ml_playground.errors import MLPlaygroundError


def serve_tensorboard(logdir: Path, port: int) -> None:
    raise MLPlaygroundError("tensorboard serving is not built yet")
