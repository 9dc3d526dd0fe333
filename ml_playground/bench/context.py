"""What every case shares: device, sizes, repetitions, the prepared char-level corpus, peaks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ml_playground.bench.nanogpt import NanoGPT
from ml_playground.bench.shapes import Sizes
from ml_playground.config import Device
from ml_playground.data.meta import DatasetMeta
from ml_playground.train.metrics import PrecisionProbe


@dataclass(frozen=True, slots=True, kw_only=True)
class Peaks:
    """Measured matmul FLOP/s of the run's device, per dtype."""

    float32: float
    bfloat16: float

    def of(self, dtype: str) -> float:
        return self.bfloat16 if dtype == "bfloat16" else self.float32


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchContext:
    device_name: Device  # as [train.runtime] and [sample.runtime] name it
    device: torch.device  # resolved (cuda:0)
    sizes: Sizes
    warmup: int
    reps: int
    corpus: Path  # the text file every training/sampling case uses
    char_dir: Path  # its char-level dataset (train.bin, val.bin, meta.json)
    char_meta: DatasetMeta
    work_dir: Path  # scratch space (run outputs), removed after the run
    peaks: Peaks
    bf16_probe: PrecisionProbe  # the trainer's check of bf16 autocast against fp32 on this device
    nanogpt: NanoGPT | None
    compile: bool  # include torch.compile variants
    force_bf16: bool  # run bf16 variants even where bf16 autocast trains slower than fp32
    tiny: bool
