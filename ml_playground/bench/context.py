"""What every case shares: device, model and batch shapes (full, and tiny for smoke runs), repetitions,
the prepared char-level corpus, peaks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ml_playground.bench.nanogpt import NanoGPT
from ml_playground.config import Device, ModelConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.train.metrics import PrecisionProbe


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int

    def applied_to(self, model: ModelConfig) -> ModelConfig:
        """`model` in this shape, without dropout and bias (nanoGPT's shakespeare_char CPU settings)."""
        return model.replace(**asdict(self), dropout=0.0, bias=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    small: ModelShape  # case 1 and the block-64 sampling model
    small_batch: int
    mid: ModelShape  # case 2
    mid_batch: int
    long: ModelShape  # case 4's 1024-context model
    samples: int  # case 4: samples of `sample_tokens` from the small model
    sample_tokens: int
    long_tokens: int
    prepare_mb: float  # case 5 input size


FULL = Sizes(
    small=ModelShape(n_layer=4, n_head=4, n_embd=128, block_size=64),
    small_batch=12,
    mid=ModelShape(n_layer=6, n_head=6, n_embd=384, block_size=256),
    mid_batch=16,
    long=ModelShape(n_layer=6, n_head=6, n_embd=384, block_size=1024),
    samples=5,
    sample_tokens=500,
    long_tokens=1000,
    prepare_mb=1024.0,
)

# Smoke run (tests): every case runs end to end in seconds; its numbers mean nothing.
TINY = Sizes(
    small=ModelShape(n_layer=1, n_head=2, n_embd=16, block_size=16),
    small_batch=4,
    mid=ModelShape(n_layer=1, n_head=2, n_embd=32, block_size=32),
    mid_batch=2,
    long=ModelShape(n_layer=1, n_head=2, n_embd=16, block_size=64),
    samples=2,
    sample_tokens=24,
    long_tokens=40,
    prepare_mb=0.25,
)


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
    peaks: dict[str, float]  # measured matmul FLOP/s of the device, "float32" and "bfloat16"
    bf16_probe: PrecisionProbe  # the trainer's check of bf16 autocast against fp32 on this device
    nanogpt: NanoGPT | None
    compile: bool  # include torch.compile variants
    force_bf16: bool  # run bf16 variants even where bf16 autocast trains slower than fp32
    tiny: bool

    def peak(self, dtype: str) -> float:
        """The measured peak of `dtype`'s matmuls (float32's for any dtype but bfloat16)."""
        return self.peaks["bfloat16" if dtype == "bfloat16" else "float32"]
