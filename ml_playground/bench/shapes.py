"""Model and batch shapes of each case: the measured sizes, or tiny ones for a smoke run."""

from __future__ import annotations

from dataclasses import dataclass

from ml_playground.config import ModelConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int

    def applied_to(self, model: ModelConfig) -> ModelConfig:
        """`model` in this shape, without dropout and bias (nanoGPT's shakespeare_char CPU settings)."""
        return model.replace(
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            block_size=self.block_size,
            dropout=0.0,
            bias=False,
        )


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
