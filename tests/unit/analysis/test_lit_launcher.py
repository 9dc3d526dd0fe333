from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from ml_playground.analysis.lit_launcher import (
    LitServerError,
    check_port_free,
    ensure_lit_env,
    run_lit,
    serve,
    server_command,
)
from ml_playground.config import SampleConfig, SampleRuntimeConfig
from ml_playground.errors import CheckpointError, MissingDependencyError, MLPlaygroundError


def test_without_uv_the_error_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match=r"uv is not on PATH.*uv sync --project") as caught:
        ensure_lit_env(tmp_path, uv=None)
    assert caught.value.exit_code == 8
    assert "\n" not in str(caught.value)


def test_a_failing_sync_says_how_to_retry(tmp_path: Path) -> None:
    failing = tmp_path / "fake-uv"
    failing.write_text("#!/bin/sh\nexit 3\n", encoding="utf-8")
    failing.chmod(0o755)
    with pytest.raises(MissingDependencyError, match=r"uv exited with 3.*uv sync --project"):
        ensure_lit_env(tmp_path, uv=str(failing))


def test_server_command_runs_the_server_module_isolated_from_the_cwd(tmp_path: Path) -> None:
    command = server_command(tmp_path / "python", tmp_path / "c.toml", 5999)
    assert command == [
        str(tmp_path / "python"),
        "-P",
        "-m",
        "ml_playground.analysis.lit_server",
        "--config",
        str(tmp_path / "c.toml"),
        "--port",
        "5999",
    ]


def test_a_busy_port_is_reported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MLPlaygroundError, match=f"port {port} on 127.0.0.1 is not available"):
            check_port_free(port)


def test_no_checkpoint_fails_before_installing_anything(tmp_path: Path) -> None:
    cfg = SampleConfig(runtime=SampleRuntimeConfig(out_dir=tmp_path))
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        run_lit(cfg, tmp_path / "c.toml", port=5999)


def test_server_failure_keeps_its_exit_code() -> None:
    error = LitServerError(5)
    assert error.exit_code == 5
    assert str(error) == "LIT server exited with code 5"


def test_a_failing_server_is_an_error_with_its_code() -> None:
    with pytest.raises(LitServerError, match="code 3") as caught:
        serve([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert caught.value.exit_code == 3


def test_sigterm_stops_the_server_and_ends_normally(tmp_path: Path) -> None:
    started = tmp_path / "started"
    child = f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)"

    def terminate_when_started() -> None:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill <pid>` does to `ml-playground lit`

    killer = threading.Thread(target=terminate_when_started)
    killer.start()
    begin = time.monotonic()
    serve([sys.executable, "-c", child])
    killer.join()
    assert time.monotonic() - begin < 50
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
