"""Process-group facts for the trainer: rank, world size, local rank (single process by default).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the trainer is one process of rank 0.
Only rank 0 writes logs, TensorBoard and checkpoints (`is_main`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ml_playground.errors import DistributedError


@dataclass(frozen=True, slots=True, kw_only=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def dist_info_from_env() -> DistInfo:
    """Read torchrun's variables; a single process when they are absent."""
    info = DistInfo(
        rank=_env_int("RANK", 0), local_rank=_env_int("LOCAL_RANK", 0), world_size=_env_int("WORLD_SIZE", 1)
    )
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise DistributedError(f"RANK={info.rank} WORLD_SIZE={info.world_size}: rank must be in [0, world size)")
    return info
