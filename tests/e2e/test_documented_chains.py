"""Every command sequence the docs show runs as written, on the shipped configs.

A doc's ```bash blocks are its sequence (tests/support/doc_chains.py reads them; nothing here
copies them). Each `make` line becomes the CLI command its Make target runs, in a subprocess from
the project root, on the shipped config rewritten only where a test must: paths into a scratch
project root (so nothing is written to the repository's out/ or datasets/, and the links between
configs, such as the LoRA base in out/shakespeare_cpu/export/hf, still hold) and shorter runs.
A config that stops fitting its partners (a LoRA block_size beyond the base model's context, a
dataset a later step no longer finds) fails here as it would for a user.

Commands on the GPU configs (device "cuda") are left out here; tests/cuda/test_gpu_chains.py runs
the sequences that hold them whole, where CUDA is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.config import PROJECT_ROOT
from ml_playground.config_loader import load_experiment_config
from tests.support.doc_chains import (
    DOCS,
    NETWORK_RULE,
    Run,
    Skip,
    classify,
    cli_arguments,
    cli_step,
    config_named,
    documented_commands,
    missing_outputs,
    plan,
    run_sequence,
)

_PACKAGE = PROJECT_ROOT / "ml_playground"
SHIPPED: list[Path] = sorted(
    [*(_PACKAGE / "configs").glob("*.toml"), *(_PACKAGE / "experiments").glob("*/config.toml")]
)


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


SEQUENCES = [doc for doc in DOCS if documented_commands(doc)]
RUNNABLE = [doc for doc in SEQUENCES if any(isinstance(classify(c), Run) for c in documented_commands(doc))]


def test_docs_have_sequences_to_run() -> None:
    names = {_rel(doc) for doc in RUNNABLE}
    assert {"README.md", "ml_playground/experiments/shakespeare_lora/Readme.md"} <= names


@pytest.mark.parametrize("doc", SEQUENCES, ids=_rel)
def test_every_documented_command_is_run_or_skipped_for_a_reason(doc: Path) -> None:
    for command, action in plan(doc):
        if isinstance(action, Run):
            step = cli_step(cli_arguments(action))
            assert step.config.is_file(), f"{command.where}: {step.config} does not exist"
            load_experiment_config(step.config)
        else:
            assert action.reason, f"{command.where}: rule {action.rule} gives no reason"


def test_every_shipped_config_is_in_a_documented_sequence() -> None:
    used = {
        cli_step(cli_arguments(action)).config for doc in RUNNABLE for _, action in plan(doc) if isinstance(action, Run)
    }
    # A config that downloads its model is documented in a sequence but not run (no network in tests).
    online = {
        config_named(command.argv)
        for doc in SEQUENCES
        for command, action in plan(doc)
        if isinstance(action, Skip) and action.rule == NETWORK_RULE
    }
    assert [_rel(path) for path in SHIPPED if path not in used | online] == []


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datasets the sequences share: four docs prepare the bundled Shakespeare the same way."""
    return tmp_path_factory.mktemp("prepared")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # up to nine CLI processes in a row (the README's sequence)
@pytest.mark.parametrize("doc", RUNNABLE, ids=_rel)
def test_documented_sequence_runs_as_written(doc: Path, tmp_path: Path, prepared: Path) -> None:
    result = run_sequence(doc, tmp_path, with_cuda=False, prepared=prepared)
    if not result.left_for_cuda:  # a sequence with GPU steps names their outputs too: tests/cuda checks it whole
        assert missing_outputs(doc, tmp_path / "root") == [], f"{_rel(doc)} names outputs its sequence did not write"
