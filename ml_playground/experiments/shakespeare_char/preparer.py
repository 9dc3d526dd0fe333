"""shakespeare_char: Shakespeare's plays, character-level. Offline by default (bundled corpus)."""

from __future__ import annotations

from pathlib import Path

from ml_playground.config import PrepareConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.experiments.shakespeare.corpus import write_bundled_corpus
from ml_playground.registry import register


@register("shakespeare_char", Path(__file__).parent)
def prepare(cfg: PrepareConfig) -> None:
    prepare_dataset(cfg, experiment="shakespeare_char", bundled=write_bundled_corpus)
