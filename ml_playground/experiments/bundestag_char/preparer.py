"""bundestag_char: a user-provided German text, character-level (vocabulary from the corpus)."""

from __future__ import annotations

from pathlib import Path

from ml_playground.config import PrepareConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.registry import register


@register("bundestag_char", Path(__file__).parent)
def prepare(cfg: PrepareConfig) -> None:
    prepare_dataset(cfg, experiment="bundestag_char")
