from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ml_playground.analysis.lit_launcher import (
    LIT_PROJECT,
    LitServerError,
    check_port_free,
    ensure_lit_env,
    run_lit,
    serve,
    server_command,
)
from ml_playground.config import SampleConfig, SampleRuntimeConfig
from ml_playground.errors import CheckpointError, MissingDependencyError, MLPlaygroundError
from tests.support.ports import reserved_port


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


def test_no_checkpoint_fails_before_installing_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uv (the one that would create or sync the LIT environment) is a stand-in that records its
    arguments: without a checkpoint it never runs; with one, the same launch reaches it."""
    calls = tmp_path / "uv-calls.txt"
    uv = tmp_path / "uv"
    uv.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\nexit 3\n', encoding="utf-8")
    uv.chmod(0o755)
    monkeypatch.setenv("UV", str(uv))
    out_dir = tmp_path / "run"
    cfg = SampleConfig(runtime=SampleRuntimeConfig(out_dir=out_dir))
    with reserved_port() as port:  # free for the launcher's check (and the server's bind), no one else's
        with pytest.raises(CheckpointError, match="no checkpoint found"):
            run_lit(cfg, tmp_path / "c.toml", port=port)
        assert not calls.exists()

        out_dir.mkdir()
        (out_dir / "ckpt_best.pt").touch()
        with pytest.raises(MissingDependencyError, match="uv exited with 3"):
            run_lit(cfg, tmp_path / "c.toml", port=port)
    assert calls.read_text(encoding="utf-8").split()[:4] == ["sync", "--project", str(LIT_PROJECT), "--locked"]


def test_server_failure_keeps_its_exit_code() -> None:
    error = LitServerError(5)
    assert error.exit_code == 5
    assert str(error) == "LIT server exited with code 5"


def test_a_failing_server_is_an_error_with_its_code() -> None:
    with pytest.raises(LitServerError, match="code 3") as caught:
        serve([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert caught.value.exit_code == 3


# A stand-in server: it announces itself (with its pid) only once its parent, the launcher,
# catches SIGTERM (bit 15 of SigCgt in /proc/<ppid>/status), so the test's SIGTERM can never
# arrive before the handler; then it waits to be stopped. It gives up after 120 s.
_SERVER = """
import os, sys, time
def launcher_catches_sigterm():
    with open(f"/proc/{os.getppid()}/status") as status:
        mask = next(line.split()[1] for line in status if line.startswith("SigCgt:"))
    return int(mask, 16) >> 14 & 1
deadline = time.monotonic() + 120
while not launcher_catches_sigterm():
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.01)
print("serving", os.getpid(), flush=True)
time.sleep(600)
"""
# The launcher: `serve` on the stand-in, then whether the default SIGTERM handling is back.
_LAUNCHER = f"""
import signal, sys
from ml_playground.analysis.lit_launcher import serve
serve([sys.executable, "-c", {_SERVER!r}])
print("restored", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc (Linux)")
def test_sigterm_stops_the_server_and_ends_normally() -> None:
    """What `kill <pid>` does to `ml-playground lit`: the launcher stops its server and exits 0."""
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        announced = launcher.stdout.readline().split()
        assert announced[:1] == ["serving"], announced
        launcher.send_signal(signal.SIGTERM)
        rest, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode == 0
    assert rest == "restored True\n"
    with pytest.raises(ProcessLookupError):  # the server was stopped and reaped
        os.kill(int(announced[1]), 0)
