"""`ml-playground lit`: make sure the LIT environment exists, then run the LIT server in it.

LIT (lit-nlp) needs numpy<2 and many packages of its own, so it lives in a separate uv project,
`lit_nlp/` (its own pyproject.toml + uv.lock, depending on this package by path). This module runs
in the core environment and never imports lit_nlp: it syncs `lit_nlp/.venv` with uv (creating it
on first use) and starts `ml_playground.analysis.lit_server` with that environment's Python.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType

from ml_playground.config import PROJECT_ROOT, SampleConfig
from ml_playground.errors import ConfigError, MissingDependencyError, MLPlaygroundError
from ml_playground.train.checkpoint import find_checkpoint

LIT_PROJECT = PROJECT_ROOT / "lit_nlp"
HOST = "127.0.0.1"
SERVER_MODULE = "ml_playground.analysis.lit_server"

log = logging.getLogger(__name__)


class LitServerError(MLPlaygroundError):
    """The LIT server process exited with an error (it printed the reason itself)."""

    def __init__(self, returncode: int):
        super().__init__(f"LIT server exited with code {returncode}")
        self.exit_code = returncode


def env_python(project: Path = LIT_PROJECT) -> Path:
    return project / ".venv" / "bin" / "python"


def sync_command(project: Path = LIT_PROJECT) -> str:
    """The command that creates or updates the LIT environment, as a person would type it."""
    return f"uv sync --project {project} --locked"


def ensure_lit_env(project: Path, uv: str | None) -> Path:
    """Sync the LIT environment with its lock file (creating it on first use); return its Python.

    `uv` is the uv executable (None: not installed). Without uv, or when the sync fails, the
    error says how to set it up by hand.
    """
    python = env_python(project)
    if uv is None:
        raise MissingDependencyError(
            f"LIT is not installed and uv is not on PATH: install uv, then run `{sync_command(project)}`"
        )
    if not python.exists():
        log.info(
            "LIT: creating its environment in %s (first use; downloads lit-nlp and its dependencies)",
            python.parent.parent,
        )
    command = [uv, "sync", "--project", str(project), "--locked", "--python", sys.executable]
    result = subprocess.run(command, check=False)
    if result.returncode != 0 or not python.exists():
        raise MissingDependencyError(
            f"LIT environment could not be set up (uv exited with {result.returncode}); run `{sync_command(project)}`"
            " (needs PyPI; if it reports a stale lock, run `uv lock --project lit_nlp` first)"
        )
    return python


def server_command(python: Path, config_path: Path, port: int) -> list[str]:
    """How to start the LIT server (-P: the working directory must not shadow installed packages)."""
    return [str(python), "-P", "-m", SERVER_MODULE, "--config", str(config_path), "--port", str(port)]


def find_uv() -> str | None:
    """The uv executable: the one running us (`uv run` sets $UV), else the one on PATH."""
    return os.environ.get("UV") or shutil.which("uv")


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server binds: connections of a previous run that linger in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise MLPlaygroundError(
                f"port {port} on {HOST} is not available ({exc.strerror}); choose another with PORT="
            ) from None


def serve(command: list[str]) -> None:
    """Run the server until it exits; SIGTERM to this process stops the server too.

    Ctrl+C reaches the server directly (same process group); it shuts down and the interrupt is
    passed on. A server stopped by our SIGTERM is a normal end; any other exit code is an error.
    """
    process = subprocess.Popen(command, cwd=PROJECT_ROOT)
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        process.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        returncode = process.wait()
    except KeyboardInterrupt:
        process.wait(timeout=30)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:
            process.kill()
            process.wait()
    if returncode != 0 and not (stopping and returncode == -signal.SIGTERM):
        raise LitServerError(returncode)


def run_lit(cfg: SampleConfig, config_path: Path, port: int) -> None:
    """Serve the experiment's best checkpoint in LIT until interrupted."""
    if cfg.runtime.init_from != "resume":  # not silently the checkpoint in out_dir instead
        raise ConfigError(
            f"sample.runtime.init_from = {cfg.runtime.init_from!r}: `lit` serves the checkpoint in "
            "sample.runtime.out_dir only; remove init_from (or finetune the source and serve that run)"
        )
    checkpoint = find_checkpoint(cfg.runtime.out_dir)  # fail before installing anything
    check_port_free(port)
    python = ensure_lit_env(LIT_PROJECT, find_uv())
    log.info("LIT: %s on http://%s:%d", checkpoint, HOST, port)
    serve(server_command(python, config_path, port))
