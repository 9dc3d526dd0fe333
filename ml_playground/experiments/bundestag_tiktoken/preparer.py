"""bundestag_tiktoken: a user-provided German text, tiktoken BPE (cl100k_base by default)."""

from __future__ import annotations

from pathlib import Path

from ml_playground.config import PrepareConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.registry import register


@register("bundestag_tiktoken", Path(__file__).parent)
def prepare(cfg: PrepareConfig) -> None:
    prepare_dataset(cfg, experiment="bundestag_tiktoken")
