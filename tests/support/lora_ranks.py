"""A LoRA run under torchrun after which every rank reports what it holds and what it wrote.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.support.lora_ranks CONFIG REPORT_DIR

Each rank runs `train.loop.train(cfg, LoRA(cfg))` (what `make train` runs for a LoRA config),
keeping a reference to the target it built, then writes REPORT_DIR/rank<r>.pt with its adapter
weights after the run and every path under the run's out_dir that the rank opened for writing,
created, renamed, linked or removed (Python audit events, so every write through Python's file
and os functions). Also: how to find and kill one rank of a running torchrun job.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ml_playground.config_loader import load_experiment_config
from ml_playground.finetune.lora import LoRA, adapter_state
from ml_playground.train.checkpoint import load_checkpoint
from ml_playground.train.loop import train
from tests.support.torchrun import ROOT, environment

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Audit events whose first two arguments may be paths that the call creates, changes or removes.
_PATH_EVENTS = frozenset(
    {"os.mkdir", "os.rename", "os.link", "os.symlink", "os.remove", "os.rmdir", "os.truncate", "shutil.copyfile"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RankReport:
    adapter: dict[str, Tensor]
    # "<audit event> <absolute path>" for each write under out_dir, in order.
    writes: list[str]


def record_writes(root: Path) -> list[str]:
    """Start recording this process's writes under `root`; the returned list fills as they happen."""
    prefix = os.path.abspath(root)
    writes: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, _mode, flags = args
            paths = [path] if isinstance(flags, int) and flags & _WRITE_FLAGS else []
        elif event in _PATH_EVENTS:
            paths = list(args[:2])
        else:
            return
        for path in paths:
            if isinstance(path, str | bytes | os.PathLike):
                text = os.path.abspath(os.fsdecode(path))  # pyright: ignore[reportUnknownArgumentType]
                if text == prefix or text.startswith(prefix + os.sep):
                    writes.append(f"{event} {text}")

    sys.addaudithook(hook)
    return writes


def main(config: Path, report_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = load_experiment_config(config).train
    if cfg is None:
        raise SystemExit(f"{config}: no [train] table")
    writes = record_writes(cfg.runtime.out_dir)
    mode = LoRA(cfg)
    train(cfg, mode)
    if mode.model is None:
        raise SystemExit("the LoRA mode built no model")
    report = {"adapter": adapter_state(mode.model), "writes": list(writes)}
    torch.save(report, report_dir / f"rank{os.environ['RANK']}.pt")


def run_ranks(config: Path, report_dir: Path, *, nproc: int = 2, timeout: float = 240) -> str:
    """Launch `main` on `nproc` CPU ranks and wait; returns the job's output (it must succeed)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "tests.support.lora_ranks", str(config), str(report_dir)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment(), timeout=timeout)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"torchrun exited {result.returncode}:\n{output[-3000:]}")
    return output


def read_report(report_dir: Path, rank: int) -> RankReport:
    raw: dict[str, Any] = torch.load(report_dir / f"rank{rank}.pt", weights_only=True)
    return RankReport(adapter=raw["adapter"], writes=raw["writes"])


def rank_pid(launcher: subprocess.Popen[str], rank: int, timeout: float = 120) -> int:
    """The pid of the worker that torchrun (`launcher`) started with RANK=rank."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{launcher.pid}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:  # the thread ended meanwhile
                continue
            for child in children:
                try:
                    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:  # a short-lived child (not a worker) exited meanwhile
                    continue
                if f"RANK={rank}".encode() in environ:
                    return int(child)
        time.sleep(0.1)
    raise AssertionError(f"no worker with RANK={rank}")


def kill_when(pid: int, process: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL `pid` as soon as `ready()`; `process` (the job) must still be running until then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the job ended before it could be killed"
        if ready():
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)
    raise AssertionError("the kill condition never held")


def checkpoint_past(out_dir: Path, iter_num: int) -> Callable[[], bool]:
    """A condition: out_dir/ckpt_last.pt exists and was written at `iter_num` or later."""

    def ready() -> bool:
        last = out_dir / "ckpt_last.pt"
        return last.exists() and load_checkpoint(last).iter_num >= iter_num

    return ready


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
