"""Placeholder until its engineer lands the real module (keeps cli.py type-checked meanwhile)."""

from __future__ import annotations

from pathlib import Path

from ml_playground.config import ExperimentConfig, ExportConfig
from ml_playground.errors import MLPlaygroundError


def run_export(export_cfg: ExportConfig, cfg: ExperimentConfig, config_path: Path) -> None:
    raise MLPlaygroundError("export is not built yet")
