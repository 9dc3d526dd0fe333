"""The shipped plays tasks: documents from the held-out tail only, seeded, one real next line per
document; both YAML files load through lm-eval offline and score a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.config import PROJECT_ROOT, EvalSettings
from ml_playground.evaluation import harness
from ml_playground.evaluation.tasks import plays_next_line
from ml_playground.experiments.shakespeare.corpus import bundled_text
from tests.unit.evaluation.test_lm import tiny_lm

TASKS = PROJECT_ROOT / "ml_playground" / "evaluation" / "tasks"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def test_documents_come_from_the_val_split_and_are_seeded() -> None:
    text = bundled_text()
    held_out = plays_next_line.held_out_text()
    assert text.endswith(held_out)
    assert len(held_out) < 0.11 * len(text)
    docs = plays_next_line.documents()
    assert docs == plays_next_line.documents()
    assert len(docs) == plays_next_line.DOCUMENTS
    for doc in docs:
        real = doc["choices"][doc["label"]]
        other = doc["choices"][1 - doc["label"]]
        speaker, lines = doc["context"].split("\n", 1)
        assert speaker.endswith(":")  # the speaker opens the context
        assert "\n" + lines + real in held_out  # the real line follows the context's lines
        assert real != other
    assert {doc["label"] for doc in docs} == {0, 1}
    assert "".join(piece["text"] for piece in plays_next_line.held_out_pieces()).strip() == held_out.strip()


def test_both_tasks_load_offline_and_score_a_model() -> None:
    lm = tiny_lm(text=bundled_text(), block=512)  # every character of the plays; few windows per text
    chosen = EvalSettings(tasks=(str(TASKS / "plays_next_line.yaml"), str(TASKS / "plays_held_out.yaml")), limit=2)
    record = harness.evaluate(lm, harness.plan(chosen, "eval"), chosen, "eval")
    assert 0.0 <= record["results"]["plays_next_line"]["acc,none"] <= 1.0
    assert record["results"]["plays_held_out"]["bits_per_byte,none"] > 0
