"""LIT dataset of an experiment: the configured prompt plus validation snippets (see `examples`).

Runs only inside the LIT environment (lit_nlp/.venv).
"""

from __future__ import annotations

from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import types as lit_types

from ml_playground.analysis.examples import SOURCES, Example


class ExperimentDataset(lit_dataset.Dataset):
    """Texts from the experiment: its sampling prompt and snippets of its validation split."""

    def __init__(self, examples: list[Example], description: str):
        super().__init__(
            spec={"text": lit_types.TextSegment(), "source": lit_types.CategoryLabel(vocab=list(SOURCES))},
            examples=[{"text": example.text, "source": example.source} for example in examples],
            description=description,
        )

    @classmethod
    def init_spec(cls) -> lit_types.Spec | None:
        return None  # built by the server from the experiment config, not from the UI
