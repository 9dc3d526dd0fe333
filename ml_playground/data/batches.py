"""Batches of (input, target) windows drawn from memmapped token files, with resumable state.

A split is one token file or several shards read as their concatenation (`Tokens`): every mode,
rank split and saved position is that of one file holding the shards one after another, and a
window may span two shards.

Modes:
- random: nanoGPT's independent random windows, from a generator owned by this source (never the
  global RNG), so its state is saved in checkpoints and resume continues the same stream.
- shuffled: the non-overlapping windows of the file in a fresh permutation every epoch.
- sequential: the non-overlapping windows in file order, epoch after epoch.

Rank awareness (DDP): each rank draws from its own random stream; in shuffled/sequential mode
rank r takes every world_size-th window of the epoch order, so ranks never share a window.
Evaluation batches come from a separate, fixed stream: each evaluation sees the same windows and
evaluating never moves the training stream.

Prefetch: `prefetch(split)` draws the next batch and starts its copy to the device (pinned memory,
non-blocking, on CUDA) while the device still computes; the next `get_batch(split)` returns it.
The saved position (`state_dict`) is that of the batches `get_batch` has returned: a prefetched
batch is drawn again after a resume, from the stream state saved before it was drawn, so exact
resume stays exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from ml_playground.config import TrainConfig
from ml_playground.data.checks import split_files
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import DataError

log = logging.getLogger(__name__)

Split = Literal["train", "val"]
SamplerMode = Literal["random", "shuffled", "sequential"]
_SPLITS: tuple[Split, ...] = ("train", "val")
# Distinct generator seeds per (purpose, rank, split), derived from the run's seed.
_EVAL_STREAM = 7919


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchShape:
    batch_size: int
    block_size: int


def _map(path: Path, dtype: np.dtype[Any]) -> np.memmap[Any, np.dtype[Any]] | None:
    """The file's tokens, memory-mapped (None for an empty file, which cannot be mapped)."""
    if not path.is_file():
        raise DataError(f"{path}: token file not found (run `make prepare` first)")
    size = path.stat().st_size
    if size % dtype.itemsize != 0:
        raise DataError(f"{path}: size {size} is not a multiple of {dtype.itemsize} ({dtype})")
    if size == 0:
        return None
    try:
        return np.memmap(path, dtype=dtype, mode="r")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None


class Tokens:
    """The tokens of one or more memory-mapped files, indexed as their concatenation."""

    def __init__(self, paths: Sequence[Path], dtype: np.dtype[Any], block_size: int) -> None:
        maps = [(path, _map(path, dtype)) for path in paths]
        self.parts = [tokens for _path, tokens in maps if tokens is not None]
        lengths = [len(tokens) for tokens in self.parts]
        self.starts = np.cumsum([0, *lengths])  # starts[i]: the index of part i's first token
        if int(self.starts[-1]) <= block_size:
            where = paths[0] if len(paths) == 1 else f"{paths[0].parent}: {len(paths)} shards"
            raise DataError(f"{where}: {int(self.starts[-1])} tokens, need more than block_size {block_size}")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """The tokens at `index` (any shape), gathered from the parts that hold them."""
        if len(self.parts) == 1:
            return self.parts[0][index]
        part = np.searchsorted(self.starts, index, side="right") - 1
        out = np.empty(index.shape, dtype=self.parts[0].dtype)
        for i in np.unique(part).tolist():
            inside = part == i
            out[inside] = self.parts[i][index[inside] - self.starts[i]]
        return out


class _SplitStream:
    """The training stream of one split for one rank."""

    def __init__(
        self,
        tokens: Tokens,
        mode: SamplerMode,
        *,
        stream_seed: int,
        order_seed: int,
        rank: int,
        world: int,
    ):
        self.tokens = tokens
        self.mode = mode
        # random mode: each rank its own stream; shuffled: one epoch order shared by all ranks.
        self.generator = torch.Generator().manual_seed(stream_seed)
        self.order_seed = order_seed
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.cursor = 0  # position in this rank's share of the epoch order

    def _epoch_order(self, block_size: int) -> Tensor:
        n_windows = (len(self.tokens) - 1) // block_size
        if self.mode == "sequential":
            order = torch.arange(n_windows)
        else:
            order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(self.order_seed + self.epoch))
        return order[self.rank :: self.world] * block_size

    def starts(self, shape: BatchShape) -> Tensor:
        if self.mode == "random":
            high = len(self.tokens) - shape.block_size
            return torch.randint(high, (shape.batch_size,), generator=self.generator)
        picked: list[Tensor] = []
        needed = shape.batch_size
        while needed > 0:
            order = self._epoch_order(shape.block_size)
            if len(order) == 0:
                raise DataError(f"split has fewer windows of {shape.block_size} tokens than ranks ({self.world})")
            take = order[self.cursor : self.cursor + needed]
            picked.append(take)
            needed -= len(take)
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch += 1
                self.cursor = 0
        return torch.cat(picked)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])


@dataclass(frozen=True, slots=True, kw_only=True)
class _Prefetched:
    x: Tensor
    y: Tensor
    stream_state: dict[str, Any]  # the stream's state before this batch was drawn


class BatchSource:
    """(x, y) batches of shape (batch_size, block_size); y is x shifted by one token."""

    def __init__(
        self,
        *,
        train_files: Sequence[Path],
        val_files: Sequence[Path],
        token_dtype: np.dtype[Any],
        batch_size: int,
        block_size: int,
        device: torch.device,
        mode: SamplerMode = "random",
        seed: int = 1337,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.shape = BatchShape(batch_size=batch_size, block_size=block_size)
        self.device = device
        self.mode = mode
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.tokens = {
            "train": Tokens(train_files, token_dtype, block_size),
            "val": Tokens(val_files, token_dtype, block_size),
        }
        self.streams = {
            split: _SplitStream(
                self.tokens[split],
                mode,
                stream_seed=self._stream_seed(i, rank=rank),
                order_seed=self._stream_seed(i, rank=0),
                rank=rank,
                world=world_size,
            )
            for i, split in enumerate(_SPLITS)
        }
        self._prefetched: dict[Split, _Prefetched] = {}

    @classmethod
    def for_run(
        cls, cfg: TrainConfig, meta: DatasetMeta, device: torch.device, *, rank: int = 0, world_size: int = 1
    ) -> BatchSource:
        """The batches a [train] config asks for ([train.data], the dataset's token files and the
        run's seed), for one rank."""
        data = cfg.data
        files = split_files(meta, data.meta_path, train_path=data.train_path, val_path=data.val_path)
        return cls(
            train_files=[file.path for file in files["train"]],
            val_files=[file.path for file in files["val"]],
            token_dtype=meta.numpy_dtype,
            batch_size=cfg.data.batch_size,
            block_size=cfg.data.block_size,
            device=device,
            mode=cfg.data.sampler,
            seed=cfg.runtime.seed,
            rank=rank,
            world_size=world_size,
        )

    def _stream_seed(self, split_index: int, *, rank: int, purpose: int = 0) -> int:
        return (self.seed * 1_000_003 + purpose * 101 + rank * 2 + split_index) % 2**62

    def _windows(self, split: Split, starts: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.tokens[split]
        T = self.shape.block_size
        # One fancy-indexed read of every window (no per-row Python loop): (B, 1) + (T+1,) -> (B, T+1)
        index = starts.numpy()[:, None] + np.arange(T + 1)
        both = torch.from_numpy(tokens[index].astype(np.int64))  # (B, T+1)
        x, y = both[:, :-1], both[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.contiguous().to(self.device), y.contiguous().to(self.device)

    def get_batch(self, split: Split) -> tuple[Tensor, Tensor]:
        """The next training batch of `split`: x, y each (batch_size, block_size) int64 (the
        prefetched one, when `prefetch` drew it)."""
        prefetched = self._prefetched.pop(split, None)
        if prefetched is not None:
            return prefetched.x, prefetched.y
        return self._windows(split, self.streams[split].starts(self.shape))

    def prefetch(self, split: Split) -> None:
        """Draw the next batch of `split` now and start copying it to the device (a no-op when one
        is already waiting): called while the device computes, it keeps data off the critical path."""
        if split in self._prefetched:
            return
        stream = self.streams[split]
        before = stream.state_dict()
        x, y = self._windows(split, stream.starts(self.shape))
        self._prefetched[split] = _Prefetched(x=x, y=y, stream_state=before)

    def eval_batches(self, split: Split, count: int) -> Iterator[tuple[Tensor, Tensor]]:
        """`count` random batches of `split`, the same ones on every call."""
        generator = torch.Generator().manual_seed(
            self._stream_seed(_SPLITS.index(split), rank=self.rank, purpose=_EVAL_STREAM)
        )
        high = len(self.tokens[split]) - self.shape.block_size
        for _ in range(count):
            yield self._windows(split, torch.randint(high, (self.shape.batch_size,), generator=generator))

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rank": self.rank,
            "world_size": self.world_size,
            "streams": {split: self._consumed_state(split) for split in _SPLITS},
        }

    def _consumed_state(self, split: Split) -> dict[str, Any]:
        """The stream's position after the batches returned so far (before any prefetched one)."""
        prefetched = self._prefetched.get(split)
        return prefetched.stream_state if prefetched is not None else self.streams[split].state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where a saved source stopped (a prefetched batch is dropped). Exact for the same
        world size; with another world size the streams restart (and a warning says so)."""
        self._prefetched.clear()
        if state.get("mode") != self.mode:
            raise DataError(f"data state was saved with sampler {state.get('mode')!r}, config says {self.mode!r}")
        if state.get("world_size") != self.world_size:
            log.warning(
                "data state was saved with world_size %s, now %d: weights, optimizer and step resume, "
                "but the data order changes (it restarts from this run's seed)",
                state.get("world_size"),
                self.world_size,
            )
            return
        streams: dict[str, dict[str, Any]] = state["streams"]
        for split, stream in self.streams.items():
            stream.load_state_dict(streams[split])
