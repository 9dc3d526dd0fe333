"""Placeholder until its engineer lands the real module (keeps cli.py type-checked meanwhile)."""

from __future__ import annotations

from ml_playground.config import SampleConfig
from ml_playground.errors import MLPlaygroundError


def run_sampling(cfg: SampleConfig) -> list[str]:
    raise MLPlaygroundError("sampling is not built yet")
