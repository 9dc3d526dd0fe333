"""`ml-playground tensorboard`: serves the runs under a log dir on 127.0.0.1; a missing logdir is one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter  # pyright: ignore[reportPrivateImportUsage]


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


def _served_url(server: subprocess.Popen[str]) -> str:
    """The URL the CLI prints once TensorBoard listens (TensorBoard's own lines may come first)."""
    assert server.stdout is not None
    seen: list[str] = []
    for line in server.stdout:  # ends when the server exits
        if served := re.match(r"TensorBoard for \S+ at (http://127\.0\.0\.1:\d+/) ", line):
            return served.group(1)
        seen.append(line)
    raise AssertionError("the server ended before it served:\n" + "".join(seen))


@pytest.mark.slow
def test_serves_the_runs_under_a_parent_on_localhost(tmp_path: Path) -> None:
    """`make tensorboard LOGDIR=out`: every run's out_dir/logs/tb under the parent is a run of its own.
    Port 0: the OS picks a free port as the server binds, and the CLI prints the URL it serves."""
    parent = tmp_path / "out"
    for run, loss in (("rope", 2.5), ("learned", 2.7)):
        with SummaryWriter(log_dir=str(parent / run / "logs" / "tb")) as writer:
            writer.add_scalar("train/loss", loss, 0)
    server = subprocess.Popen(
        [sys.executable, "-m", "ml_playground.cli", "tensorboard", "--logdir", str(parent), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    expected = {"learned/logs/tb", "rope/logs/tb"}
    try:
        url = _served_url(server)
        assert not url.endswith(":0/")
        deadline = time.monotonic() + 180
        tags: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline and set(tags) != expected:
            assert server.poll() is None, server.communicate()[0]
            try:
                with urllib.request.urlopen(f"{url}data/plugin/scalars/tags", timeout=5) as reply:
                    tags = json.loads(reply.read())
            except OSError:
                time.sleep(0.5)
        assert set(tags) == expected
        assert all("train/loss" in run_tags for run_tags in tags.values())
    finally:
        server.terminate()
        server.communicate(timeout=60)
