"""Placeholder until its engineer lands the real module (keeps cli.py type-checked meanwhile)."""

from __future__ import annotations

from pathlib import Path

from ml_playground.config import SampleConfig
from ml_playground.errors import MLPlaygroundError


def run_lit(cfg: SampleConfig, config_path: Path, port: int) -> None:
    raise MLPlaygroundError("LIT integration is not built yet")
