"""Launch the real CLI under torchrun (2 CPU processes, gloo, 127.0.0.1) with a TOML written here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch.distributed import TCPStore  # pyright: ignore[reportPrivateImportUsage]  # torch's public name, re-exported from C

ROOT = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"  # pyright: ignore[reportUnknownVariableType]
    raise TypeError(f"no TOML form for {type(value).__name__}")


def write_toml(path: Path, tables: dict[str, Any]) -> Path:
    """Nested dicts of str/int/float/bool (and lists of them) as TOML tables (enough for experiment configs)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if scalars:
            lines.append(f"[{prefix}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in scalars.items())
        for key, value in table.items():
            if isinstance(value, dict):
                emit(f"{prefix}.{key}" if prefix else key, value)  # pyright: ignore[reportUnknownArgumentType]

    emit("", tables)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CLI = "ml_playground.cli"


def torchrun_command(*module_args: str, nproc: int, max_restarts: int = 0) -> list[str]:
    """`python -m <module_args>` on nproc ranks: torchrun --standalone (plain Python for one)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    if nproc == 1:
        launcher = [sys.executable]
    restarts = [f"--max-restarts={max_restarts}"] if nproc > 1 else []
    return [*launcher, *restarts, "-m", *module_args]


def train_command(config: Path, *, nproc: int, max_restarts: int = 0, module: str = CLI) -> list[str]:
    """`make train NPROC=n` without make: torchrun --standalone over the CLI module (or a module
    that runs the CLI, such as tests.support.kill_switch)."""
    args = (module, "train", "shakespeare", "--exp-config", str(config))
    return torchrun_command(*args, nproc=nproc, max_restarts=max_restarts)


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    # One intra-op thread per rank: the CPU is shared, and spinning thread pools slow tiny models.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra or {})}


def start(
    config: Path, *, nproc: int, max_restarts: int = 0, module: str = CLI, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        train_command(config, nproc=nproc, max_restarts=max_restarts, module=module),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment(env),
        start_new_session=True,  # the test can end the whole process group if something hangs
    )


def run(config: Path, *, nproc: int, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        train_command(config, nproc=nproc),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=timeout,
    )


def make_train(config: Path, *, nproc: int, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The user's command: `make train EXP=shakespeare CONFIG=... NPROC=n` (torchrun --standalone)."""
    return subprocess.run(
        ["make", "-s", "train", "EXP=shakespeare", f"CONFIG={config}", f"NPROC={nproc}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=timeout,
    )


@contextmanager
def agent_store(world_size: int = 2) -> Generator[dict[str, str]]:
    """A rendezvous store on a port the OS picked, held by this process for the block, as
    torchrun's agent holds one: every rank joins it as a client, so no port is probed first and
    bound later (by then perhaps by someone else). Yields the environment that points a rank at it."""
    store = TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)
    try:
        yield {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    finally:
        del store
