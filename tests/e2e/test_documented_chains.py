"""Every command sequence the docs show runs as written, on the shipped configs.

A doc's ```bash blocks are its sequence (tests/support/doc_chains.py reads them; nothing here
copies them). Each `make` line becomes the CLI command its Make target runs, in a subprocess from
the project root, on the shipped config rewritten only where a test must: paths into a scratch
project root (so nothing is written to the repository's out/ or datasets/, and the links between
configs, such as the LoRA base in out/shakespeare_cpu/export/hf, still hold) and shorter runs.
A config that stops fitting its partners (a LoRA block_size beyond the base model's context, a
dataset a later step no longer finds) fails here as it would for a user.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_playground.config import PROJECT_ROOT
from ml_playground.config_loader import load_experiment_config
from tests.support.doc_chains import (
    DOCS,
    ITERATIONS,
    SOURCE,
    CliStep,
    DocCommand,
    Run,
    Skip,
    changed_keys,
    classify,
    cli_arguments,
    cli_step,
    documented_commands,
    dump_toml,
    moved_keys,
    named_outputs,
    read_toml,
    resolved_paths,
    rewrite,
)

_PACKAGE = PROJECT_ROOT / "ml_playground"
SHIPPED: list[Path] = sorted(
    [*(_PACKAGE / "configs").glob("*.toml"), *(_PACKAGE / "experiments").glob("*/config.toml")]
)

# The text a user provides where a config's [prepare].source names a file (the bundestag corpora):
# German, and it holds every character of the configs' sample prompt ("Sehr geehrte Damen und
# Herren"), which a char-level vocabulary must contain.
USER_CORPUS = (
    "Sehr geehrte Damen und Herren, liebe Kolleginnen und Kollegen! Der Bundestag berät heute in "
    "erster Lesung den Entwurf eines Gesetzes zur Stärkung der Wettbewerbsfähigkeit. Wir haben über "
    "die Änderungsanträge der Fraktionen abgestimmt; die Beschlussempfehlung des Ausschusses ist "
    "angenommen. Ich erteile das Wort der Abgeordneten für die Fraktion.\n"
) * 60


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def _plan(doc: Path) -> list[tuple[DocCommand, Skip | Run]]:
    plan: list[tuple[DocCommand, Skip | Run]] = []
    for command in documented_commands(doc):
        action = classify(command)
        assert action is not None, f"{command.where}: no rule runs or skips this documented command; add one"
        plan.append((command, action))
    return plan


SEQUENCES = [doc for doc in DOCS if documented_commands(doc)]
RUNNABLE = [doc for doc in SEQUENCES if any(isinstance(classify(c), Run) for c in documented_commands(doc))]


def test_docs_have_sequences_to_run() -> None:
    names = {_rel(doc) for doc in RUNNABLE}
    assert {"README.md", "ml_playground/experiments/shakespeare_lora/Readme.md"} <= names


@pytest.mark.parametrize("doc", SEQUENCES, ids=_rel)
def test_every_documented_command_is_run_or_skipped_for_a_reason(doc: Path) -> None:
    for command, action in _plan(doc):
        if isinstance(action, Run):
            step = cli_step(cli_arguments(action))
            assert step.config.is_file(), f"{command.where}: {step.config} does not exist"
            load_experiment_config(step.config)
        else:
            assert action.reason, f"{command.where}: rule {action.rule} gives no reason"


def test_every_shipped_config_is_in_a_documented_sequence() -> None:
    used = {
        cli_step(cli_arguments(action)).config
        for doc in RUNNABLE
        for _, action in _plan(doc)
        if isinstance(action, Run)
    }
    assert [_rel(path) for path in SHIPPED if path not in used] == []


def _prepare_config(step: CliStep, configs: Path, scratch: Path) -> Path:
    """The rewritten config of `step` (written once per shipped file), checked to differ from the
    shipped one only in moved paths and run lengths, and to resolve every path into `scratch`."""
    target = configs / step.config.relative_to(PROJECT_ROOT)
    if target.exists():
        return target
    shipped = read_toml(step.config)
    rewritten = rewrite(shipped, scratch)
    allowed = set(ITERATIONS) | set(moved_keys(shipped))
    assert changed_keys(shipped, rewritten) <= allowed, _rel(step.config)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dump_toml(rewritten), encoding="utf-8")
    assert read_toml(target) == rewritten
    outside = [key for key, path in resolved_paths(load_experiment_config(target)) if not path.is_relative_to(scratch)]
    assert outside == [], f"{_rel(step.config)}: paths left in the repository: {outside}"
    if SOURCE in moved_keys(shipped):  # the corpus the doc asks the user to provide
        corpus = Path(rewritten["prepare"]["source"])
        corpus.parent.mkdir(parents=True, exist_ok=True)
        if not corpus.exists():
            corpus.write_text(USER_CORPUS, encoding="utf-8")
    return target


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUNNABLE, ids=_rel)
def test_documented_sequence_runs_as_written(doc: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "root"
    configs = tmp_path / "configs"
    steps: list[tuple[DocCommand, list[str]]] = []
    for command, action in _plan(doc):
        if isinstance(action, Skip):
            continue
        step = cli_step(cli_arguments(action))
        config = _prepare_config(step, configs, scratch)
        steps.append((command, [step.command, step.experiment, "--exp-config", str(config), *step.extra]))

    # Offline, as the docs promise; one intra-op thread, since spinning thread pools make these
    # small models several times slower on a CPU the test suite shares.
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for command, args in steps:
        result = subprocess.run(
            [sys.executable, "-m", "ml_playground.cli", *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            check=False,
        )
        assert result.returncode == 0, f"{command.where} exited {result.returncode}:\n{result.stderr[-3000:]}"

    missing = [path for path in named_outputs(doc) if not (scratch / path).exists()]
    assert missing == [], f"{_rel(doc)} names outputs its sequence did not write"
