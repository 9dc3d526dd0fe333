"""`ml-playground tensorboard`: serves the runs under a log dir on 127.0.0.1; a missing logdir is one line."""

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
def test_serves_the_runs_under_a_parent_on_localhost(tmp_path: Path) -> None:
    """`make tensorboard LOGDIR=out`: every run's out_dir/logs/tb under the parent is a run of its own."""
    parent = tmp_path / "out"
    for run, loss in (("rope", 2.5), ("learned", 2.7)):
        with SummaryWriter(log_dir=str(parent / run / "logs" / "tb")) as writer:
            writer.add_scalar("train/loss", loss, 0)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ml_playground.cli", "tensorboard", "--logdir", str(parent), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    expected = {"learned/logs/tb", "rope/logs/tb"}
    try:
        deadline = time.monotonic() + 180
        tags: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline and set(tags) != expected:
            assert server.poll() is None, server.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as reply:
                    tags = json.loads(reply.read())
            except OSError:
                time.sleep(0.5)
        assert set(tags) == expected
        assert all("train/loss" in run_tags for run_tags in tags.values())
    finally:
        server.terminate()
        server.communicate(timeout=60)
