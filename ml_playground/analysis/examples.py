"""The texts LIT shows: the configured prompt plus evenly spaced snippets of the validation split.

No LIT import: examples are plain records, turned into a LIT dataset by `lit_dataset`.
Snippets are taken at evenly spaced offsets (no randomness), so every launch shows the same ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ml_playground.config import DataConfig
from ml_playground.data.meta import read_meta
from ml_playground.errors import DataError
from ml_playground.tokenizers import Tokenizer

log = logging.getLogger(__name__)

Source = Literal["prompt", "validation"]
SOURCES: tuple[Source, ...] = ("prompt", "validation")


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    text: str
    source: Source


def snippet_offsets(total: int, count: int, length: int) -> list[int]:
    """Start offsets of up to `count` non-overlapping, evenly spaced windows of `length` in `total`."""
    if total < length or count <= 0:
        return []
    windows = min(count, total // length)
    stride = (total - length) // max(windows - 1, 1)
    return [i * stride for i in range(windows)]


def validation_snippets(
    val_path: Path, tokenizer: Tokenizer, dtype: np.dtype[np.unsignedinteger], count: int, length: int
) -> list[str]:
    """Decode `count` windows of `length` tokens from a token file (little-endian ids of `dtype`)."""
    tokens = np.memmap(val_path, dtype=dtype, mode="r")
    length = min(length, len(tokens))
    return [
        tokenizer.decode(tokens[start : start + length].tolist())
        for start in snippet_offsets(len(tokens), count, length)
    ]


def build_examples(
    prompt: str, data: DataConfig | None, tokenizer: Tokenizer, count: int, length: int
) -> list[Example]:
    """The prompt first, then validation snippets when the experiment's val split is on disk.

    A missing split is reported (logged) and the prompt is served alone: the checkpoint alone is
    enough to explore the model.
    """
    examples = [Example(text=prompt, source="prompt")]
    if data is None:
        log.warning("no [train.data] in the config: serving the configured prompt only")
        return examples
    if not data.val_path.is_file():
        log.warning("%s not found (run `make prepare`): serving the configured prompt only", data.val_path)
        return examples
    meta = read_meta(data.meta_path)
    if meta.vocab_size != tokenizer.vocab_size:
        raise DataError(
            f"{data.meta_path}: vocab_size {meta.vocab_size} differs from the checkpoint's tokenizer"
            f" ({tokenizer.vocab_size}); train.data.dataset_dir points at another dataset"
        )
    texts = validation_snippets(data.val_path, tokenizer, meta.numpy_dtype, count, length)
    return examples + [Example(text=text, source="validation") for text in texts]
