"""`ml-playground tensorboard`: serves a run's event files on 127.0.0.1; a missing logdir is one line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter  # pyright: ignore[reportPrivateImportUsage]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_missing_logdir_is_one_line_exit_4(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", "tensorboard", "--logdir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 4
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none'}: TensorBoard log directory not found (training writes out_dir/logs/tb)"
    ]


@pytest.mark.slow
def test_serves_scalars_on_localhost(tmp_path: Path) -> None:
    logdir = tmp_path / "logs" / "tb"
    with SummaryWriter(log_dir=str(logdir)) as writer:
        writer.add_scalar("train/loss", 2.5, 0)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ml_playground.cli", "tensorboard", "--logdir", str(logdir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        tags: dict[str, object] = {}
        while time.monotonic() < deadline and "train/loss" not in json.dumps(tags):
            assert server.poll() is None, server.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as reply:
                    tags = json.loads(reply.read())
            except OSError:
                time.sleep(0.5)
        assert "train/loss" in json.dumps(tags)
    finally:
        server.terminate()
        server.communicate(timeout=60)
