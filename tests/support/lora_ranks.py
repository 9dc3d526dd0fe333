"""A LoRA run under torchrun after which every rank reports what it holds and what it wrote.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.support.lora_ranks CONFIG REPORT_DIR

Each rank runs `train.loop.train(cfg, LoRA(cfg))` (what `make train` runs for a LoRA config),
keeping a reference to the target it built, then writes REPORT_DIR/rank<r>.pt with its adapter
weights after the run and every path under the run's out_dir that the rank opened for writing,
created, renamed, linked or removed (support/write_audit.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ml_playground.config_loader import load_experiment_config
from ml_playground.finetune.lora import LoRA, adapter_state
from ml_playground.train.loop import train
from tests.support.torchrun import ROOT, environment
from tests.support.write_audit import record_writes


@dataclass(frozen=True, slots=True, kw_only=True)
class RankReport:
    adapter: dict[str, Tensor]
    # "<audit event> <absolute path>" for each write under out_dir, in order.
    writes: list[str]


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


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
