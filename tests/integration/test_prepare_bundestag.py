from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ml_playground import registry
from ml_playground.config import PrepareConfig
from ml_playground.config_loader import load_experiment_config, require
from ml_playground.data.meta import read_meta
from ml_playground.data.sources import local_path
from ml_playground.errors import DataError
from ml_playground.tokenizers import tokenizer_from_meta

GERMAN = (
    "Sehr geehrte Frau Präsidentin! Meine sehr geehrten Damen und Herren!\n"
    "Wir beraten heute über die Änderung des Gesetzes zur Förderung der Wärmepumpen.\n"
    "„Das ist eine große Aufgabe“, sagte die Abgeordnete. (Beifall bei der SPD)\n"
    "Die Bürgerinnen und Bürger erwarten Verlässlichkeit – auch bei den Zuschüssen von 1.500 €.\n\n"
)


def _shipped_prepare(name: str, tmp_path: Path, source: str) -> PrepareConfig:
    experiment = registry.get(name)
    cfg = require(load_experiment_config(experiment.default_config).prepare, experiment.default_config, "prepare")
    return dataclasses.replace(cfg, dataset_dir=tmp_path / "datasets", source=source)


@pytest.mark.parametrize(
    ("name", "kind", "dtype"),
    [("bundestag_char", "char", "uint16"), ("bundestag_tiktoken", "tiktoken", "uint32")],
)
def test_bundestag_prepares_user_text(tmp_path: Path, name: str, kind: str, dtype: str) -> None:
    text = GERMAN * 40
    corpus = tmp_path / "reden.txt"
    corpus.write_text(text, encoding="utf-8")
    cfg = _shipped_prepare(name, tmp_path, str(corpus))
    registry.get(name).preparer(cfg)

    meta = read_meta(cfg.dataset_dir / "meta.json")
    assert (meta.kind, meta.dtype) == (kind, dtype)
    if kind == "char":
        assert meta.itos == sorted(set(text))
    else:
        assert meta.encoding == "cl100k_base"
    tokenizer = tokenizer_from_meta(meta)
    train = np.fromfile(cfg.dataset_dir / "train.bin", dtype=meta.numpy_dtype).tolist()
    val = np.fromfile(cfg.dataset_dir / "val.bin", dtype=meta.numpy_dtype).tolist()
    assert tokenizer.decode(train) + tokenizer.decode(val) == text
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15


@pytest.mark.parametrize("name", ["bundestag_char", "bundestag_tiktoken"])
def test_bundestag_missing_input_says_where_to_put_it(tmp_path: Path, name: str) -> None:
    experiment = registry.get(name)
    shipped = require(load_experiment_config(experiment.default_config).prepare, experiment.default_config, "prepare")
    assert local_path(shipped.source) == experiment.folder / "datasets" / "input.txt"
    missing = tmp_path / "datasets" / "input.txt"
    cfg = _shipped_prepare(name, tmp_path, str(missing))
    expected = rf"^{missing}: corpus not found .*put a UTF-8 text file there$"
    if cfg.fallback_source is not None:  # bundestag_tiktoken also reads bundestag_char's corpus: name both
        fallback = tmp_path / "bundestag_char" / "input.txt"
        cfg = dataclasses.replace(cfg, fallback_source=str(fallback))
        expected = (
            rf"^corpus not found: put a UTF-8 text file at {fallback} \(prepare.fallback_source\) "
            rf"or at {missing} \(prepare.source\)$"
        )
    with pytest.raises(DataError, match=expected):
        experiment.preparer(cfg)
    with pytest.raises(DataError, match="has no bundled corpus"):
        experiment.preparer(dataclasses.replace(cfg, source="bundled", fallback_source=None))
