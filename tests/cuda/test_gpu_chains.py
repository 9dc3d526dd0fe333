"""The documented sequences that hold GPU configs (`*_gpu.toml`, device "cuda") run whole, as
written, on the shipped configs rewritten only in paths and run lengths
(tests/support/doc_chains.py; tests/e2e/test_documented_chains.py runs the rest without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.config import PROJECT_ROOT
from tests.cuda.device import layer_runs
from tests.support.doc_chains import DOCS, Run, cli_arguments, cli_step, missing_outputs, needs_cuda, plan, run_sequence


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def _has_gpu_step(doc: Path) -> bool:
    runs = [action for _, action in plan(doc) if isinstance(action, Run)]
    return any(needs_cuda(cli_step(cli_arguments(action)).config) for action in runs)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The GPU sequences, listed only where the layer runs: listing asks make about every
    documented step, which every other pytest run (`make unit` too) would pay at collection."""
    if "doc" in metafunc.fixturenames:
        gpu_sequences = [doc for doc in DOCS if _has_gpu_step(doc)] if layer_runs() else []
        metafunc.parametrize("doc", gpu_sequences, ids=_rel)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datasets the sequences share (the same corpus prepared the same way in several docs)."""
    return tmp_path_factory.mktemp("prepared")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # up to seven CLI processes in a row, GPU-sized models
def test_documented_gpu_sequence_runs_as_written(doc: Path, tmp_path: Path, prepared: Path) -> None:
    result = run_sequence(doc, tmp_path, with_cuda=True, prepared=prepared)
    assert result.left_for_cuda == []
    assert missing_outputs(doc, tmp_path / "root") == [], f"{_rel(doc)} names outputs its sequence did not write"
