"""The documented sequences that hold GPU configs (`*_gpu.toml`, device "cuda") run whole, as
written, on the shipped configs rewritten only in paths and run lengths
(tests/support/doc_chains.py; tests/e2e/test_documented_chains.py runs the rest without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.config import PROJECT_ROOT
from tests.support.doc_chains import DOCS, Run, cli_arguments, cli_step, missing_outputs, needs_cuda, plan, run_sequence


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def _has_gpu_step(doc: Path) -> bool:
    runs = [action for _, action in plan(doc) if isinstance(action, Run)]
    return any(needs_cuda(cli_step(cli_arguments(action)).config) for action in runs)


GPU_SEQUENCES = [doc for doc in DOCS if _has_gpu_step(doc)]


@pytest.mark.slow
@pytest.mark.parametrize("doc", GPU_SEQUENCES, ids=_rel)
def test_documented_gpu_sequence_runs_as_written(doc: Path, tmp_path: Path) -> None:
    result = run_sequence(doc, tmp_path, with_cuda=True)
    assert result.left_for_cuda == []
    assert missing_outputs(doc, tmp_path / "root") == [], f"{_rel(doc)} names outputs its sequence did not write"
