"""DDP on CUDA: one rank, and two where two GPUs are, under real torchrun open a process group on
the backend the trainer chooses for cuda (nccl, on cuda:LOCAL_RANK) and train a `wrap_ddp` GPT
like an unwrapped one (with two ranks nccl really reduces: both ranks' gradients, of the same
batch, average to one rank's); the CLI's `make train NPROC=1`-style launch under torchrun trains
on the GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cuda.device import DEVICE, DTYPE
from tests.support.tiny_training import read_scalars, tiny_train_table, write_char_dataset
from tests.support.torchrun import ROOT, environment, write_toml

pytestmark = pytest.mark.slow


def _ranks(nproc: int, *module_args: str) -> list[str]:
    """`torchrun --standalone --nproc_per_node=N -m ...` (tests.support.torchrun runs a single
    process without torchrun; here the launcher and its environment are the point)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", *module_args]


def _one_rank(*module_args: str) -> list[str]:
    return _ranks(1, *module_args)


@pytest.mark.parametrize(
    "nproc",
    [
        1,
        pytest.param(
            2,
            marks=pytest.mark.skipif(
                torch.cuda.device_count() < 2, reason="a 2-rank nccl reduction needs 2 GPUs; fewer are visible"
            ),
        ),
    ],
)
def test_ddp_over_the_cuda_backend_equals_plain_training(tmp_path: Path, nproc: int) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        _ranks(nproc, "tests.support.nccl_rank", DEVICE, DTYPE, str(report)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    got = json.loads(report.read_text(encoding="utf-8"))
    expected_backend = "nccl" if DEVICE == "cuda" else "gloo"
    assert (got["backend"], got["chosen_backend"], got["world_size"]) == (expected_backend, expected_backend, nproc)
    assert got["device"] == ("cuda:0" if DEVICE == "cuda" else "cpu")
    # Bitwise equal where the kernels are deterministic (noise 0), else within the device's own noise.
    assert got["ddp_difference"] <= 4 * got["noise"]
    assert got["ddp_losses"][0] == got["plain_losses"][0]  # the first forward precedes any update
    assert got["plain_losses"][-1] < got["plain_losses"][0]


def test_cli_under_torchrun_trains_on_the_device(tmp_path: Path) -> None:
    write_char_dataset(tmp_path / "ds")
    table = tiny_train_table(tmp_path / "ds", tmp_path / "out")
    table["runtime"] |= {"device": DEVICE, "dtype": DTYPE, "max_iters": 10, "eval_interval": 10}
    config = write_toml(tmp_path / "train.toml", {"train": table})
    result = subprocess.run(
        _one_rank("ml_playground.cli", "train", "shakespeare", "--exp-config", str(config)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    device = "cuda:0" if DEVICE == "cuda" else "cpu"
    assert f"training on {device} ({DTYPE}), 1 rank(s)" in result.stderr
    assert [step for step, _ in read_scalars(tmp_path / "out" / "logs" / "tb")["train/loss"]] == list(range(10))
