"""Placeholder until its engineer lands the real module (keeps cli.py type-checked meanwhile)."""

from __future__ import annotations

from ml_playground.config import SampleConfig, TrainConfig
from ml_playground.errors import MLPlaygroundError
from ml_playground.interop.export import ExportSource


def merged_export_source(cfg: TrainConfig) -> ExportSource:
    raise MLPlaygroundError("export of LoRA-finetuned models is not built yet")


def run_finetune(cfg: TrainConfig) -> None:
    raise MLPlaygroundError("LoRA finetuning is not built yet")


def run_finetune_sampling(cfg: SampleConfig, train: TrainConfig) -> list[str]:
    raise MLPlaygroundError("LoRA sampling is not built yet")
