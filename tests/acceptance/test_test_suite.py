"""The test suite's own guarantees: the CUDA layer fails where CUDA is required but absent
(`make test-cuda`, tools/gpu_check.sh) and skips otherwise; a process a test leaves running fails
the session (tests/support/process_guard.py), also one its launcher orphaned."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRE_CUDA = "ML_PLAYGROUND_REQUIRE_CUDA"


def _pytest(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow
def test_the_cuda_layer_fails_where_cuda_is_required_but_absent() -> None:
    """CUDA_VISIBLE_DEVICES="" hides any GPU, as a broken driver would."""
    hidden = {key: value for key, value in os.environ.items() if key != REQUIRE_CUDA} | {"CUDA_VISIBLE_DEVICES": ""}
    layer = "tests/cuda/test_muon.py"
    skipped = _pytest(layer, "-rs", env=hidden)
    assert skipped.returncode == 0, skipped.stdout[-3000:]
    assert "1 skipped" in skipped.stdout
    assert f"{REQUIRE_CUDA}=1 makes this a failure" in skipped.stdout
    required = _pytest(layer, env=hidden | {REQUIRE_CUDA: "1"})
    assert required.returncode == 1, required.stdout[-3000:]
    assert "1 error" in required.stdout  # the layer's autouse fixture fails each test
    assert f"{REQUIRE_CUDA}=1 but CUDA is not usable here" in required.stdout


def test_make_test_cuda_and_the_gpu_check_require_cuda() -> None:
    recipe = subprocess.run(
        ["make", "-n", "--no-print-directory", "test-cuda"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    pytest_lines = [shlex.split(line) for line in recipe if " pytest " in f" {line} "]
    assert len(pytest_lines) == 1
    assert pytest_lines[0][0] == f"{REQUIRE_CUDA}=1"
    assert pytest_lines[0][-2:] == ["-m", "cuda"]
    script = (ROOT / "tools" / "gpu_check.sh").read_text(encoding="utf-8")
    tests_phase = script[script.index("if wants tests; then") :]
    assert tests_phase.index(f'[ "$DEV" = cuda ] && export {REQUIRE_CUDA}=1') < tests_phase.index("phase tests")


_LEAKY_TESTS = """
import subprocess
from pathlib import Path


def test_leaves_a_child() -> None:
    child = subprocess.Popen(["sleep", "300"])
    with (Path(__file__).parent / "pids").open("a") as out:
        out.write(f"{child.pid}\\n")


def test_orphans_a_grandchild() -> None:
    # The shell starts sleep in the background and exits: sleep's parent is gone.
    pid_file = Path(__file__).parent / "pids"
    subprocess.run(["sh", "-c", f"sleep 301 & echo $! >> {pid_file}"], check=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist workers"])
def test_a_process_left_running_fails_the_session_and_is_stopped(tmp_path: Path, workers: list[str]) -> None:
    """Under pytest-xdist (`make test`) the workers check, and the controller fails the run."""
    (tmp_path / "test_leaky.py").write_text(_LEAKY_TESTS, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = dict(os.environ)
    result = _pytest(
        str(tmp_path / "test_leaky.py"),
        "-c",
        str(tmp_path / "pytest.ini"),
        "-p",
        "tests.support.process_guard",
        *workers,
        env=env,
    )
    assert "2 passed" in result.stdout, result.stdout[-3000:]
    assert result.returncode == 1, result.stdout[-3000:]
    assert "processes started by the tests are still running: 2" in result.stdout
    assert "sleep 300" in result.stdout
    assert "sleep 301" in result.stdout  # the orphan: re-parented to pytest, not to init
    pids = [int(line) for line in (tmp_path / "pids").read_text(encoding="utf-8").split()]
    assert len(pids) == 2
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


@pytest.mark.slow
def test_a_session_whose_processes_all_ended_passes(tmp_path: Path) -> None:
    (tmp_path / "test_tidy.py").write_text(
        "import subprocess\n\ndef test_waits() -> None:\n    subprocess.run(['true'], check=True)\n", encoding="utf-8"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    result = _pytest(
        str(tmp_path / "test_tidy.py"),
        "-c",
        str(tmp_path / "pytest.ini"),
        "-p",
        "tests.support.process_guard",
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "still running" not in result.stdout
