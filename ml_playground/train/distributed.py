"""Multi-process training under torchrun: rank facts, the process group, collectives, wrapping.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the trainer
is one process of rank 0 and nothing here opens a process group. The backend follows the device:
gloo on CPU, nccl on CUDA (each rank on cuda:LOCAL_RANK). Every collective runs under the
group's timeout (`train.runtime.dist_timeout_s`), so a dead or stuck peer ends the job with a
`DistributedError` instead of a hang. Only rank 0 writes logs, TensorBoard and checkpoints
(`is_main`).

Global batch (sequences per optimizer step) = batch_size x grad_accum_steps x world_size.
With `train.data.global_batch_size` set, grad_accum_steps is derived from it per world size.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

# torch.distributed's documented store classes, imported there from torch._C without a re-export.
from torch.distributed import PrefixStore, Store, TCPStore  # pyright: ignore[reportPrivateImportUsage]
from torch.nn.parallel import DistributedDataParallel

from ml_playground.config import DataConfig
from ml_playground.errors import DistributedError, summary

Backend = Literal["gloo", "nccl"]
_T = TypeVar("_T")


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
    if info.local_rank < 0:
        raise DistributedError(f"LOCAL_RANK={info.local_rank}: must not be negative")
    return info


def backend_for(device: torch.device) -> Backend:
    """gloo for CPU tensors, nccl for CUDA; MPS has no multi-process backend."""
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise DistributedError(
        f"train.runtime.device: {device.type} has no distributed backend; use cpu (gloo) or cuda (nccl) with torchrun"
    )


def grad_accum_steps_for(data: DataConfig, world_size: int) -> int:
    """Micro-steps per rank and optimizer step, so that the global batch is what the config says."""
    if data.global_batch_size is None:
        return data.grad_accum_steps
    per_step = data.batch_size * world_size
    if data.global_batch_size % per_step != 0:
        raise DistributedError(
            f"train.data.global_batch_size: {data.global_batch_size} is not divisible by "
            f"batch_size {data.batch_size} x world_size {world_size} = {per_step}"
        )
    return data.global_batch_size // per_step


def _restart_round_store(info: DistInfo, timeout: datetime.timedelta) -> Store | None:
    """Under torchrun: its store, seen through a prefix of this restart round (None: env://).

    After `torchrun --max-restarts` restarts the workers, the store the agent hosts still holds
    the previous round's keys, among them the gloo/nccl addresses of workers that are gone; new
    workers read them and fail connecting to dead ports (pytorch/pytorch#167288). One key prefix
    per round keeps the rounds apart."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None:
        return None
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        info.world_size,
        is_master=not agent_hosts_store and info.rank == 0,
        timeout=timeout,
        multi_tenant=True,
    )
    return PrefixStore(f"ml_playground/restart_{restart}", store)


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device, timeout_s: float) -> Generator[None]:
    """Open the default process group for a torchrun launch (nothing for one process); always
    destroyed on the way out, also after an error."""
    if not info.is_distributed:
        yield
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={info.world_size} but {', '.join(missing)} not set: launch with torchrun (make train NPROC=N)"
        )
    backend = backend_for(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    with translate_peer_failures(info, "init_process_group"):
        torch_dist.init_process_group(
            backend=backend,
            store=_restart_round_store(info, timeout),
            rank=info.rank,
            world_size=info.world_size,
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
        )
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


# gloo reports a collective that timed out or lost its peer as a plain RuntimeError, not a
# DistError (torch 2.15): "[.../gloo/transport/tcp/...] Timed out waiting 3000ms for send
# operation to complete", then "Application timeout caused pair closure" on later collectives
# over the same pair. Its message is all that tells them from other RuntimeErrors.
_GLOO_PEER_FAILURES = ("gloo/transport/", "Application timeout caused pair closure")


def _is_peer_failure(exc: RuntimeError) -> bool:
    """Whether `exc` is a collective failing because a peer died or timed out (not a bug)."""
    if isinstance(exc, torch_dist.DistError):
        return True
    return any(marker in str(exc) for marker in _GLOO_PEER_FAILURES)


@contextlib.contextmanager
def translate_peer_failures(info: DistInfo, what: str) -> Generator[None]:
    """A collective that fails because a peer died or timed out becomes one DistributedError line."""
    try:
        yield
    except RuntimeError as exc:  # DistError is a RuntimeError
        if not _is_peer_failure(exc):
            raise
        raise DistributedError(
            f"rank {info.rank}/{info.world_size}: {what} failed, a peer process died or timed out "
            f"({type(exc).__name__}: {summary(exc)[:300]}); rerun to resume from ckpt_last.pt "
            "(torchrun --max-restarts=N does this automatically)"
        ) from None


def guarded(info: DistInfo, what: str, collective: Callable[[], _T]) -> _T:
    with translate_peer_failures(info, what):
        return collective()


def barrier(info: DistInfo) -> None:
    """Wait until every rank arrives (no-op for one process)."""
    if info.is_distributed:
        guarded(info, "barrier", torch_dist.barrier)


def all_reduce_mean(info: DistInfo, value: Tensor) -> Tensor:
    """The mean of `value` over all ranks (returned as is for one process)."""
    if not info.is_distributed:
        return value
    reduced = value.detach().clone()

    def reduce() -> None:
        torch_dist.all_reduce(reduced, op=torch_dist.ReduceOp.SUM)

    guarded(info, "all_reduce", reduce)
    return reduced / info.world_size


def all_reduce_min(info: DistInfo, value: Tensor) -> Tensor:
    """The element-wise minimum of `value` over all ranks (returned as is for one process)."""
    if not info.is_distributed:
        return value
    reduced = value.detach().clone()
    guarded(info, "all_reduce", lambda: torch_dist.all_reduce(reduced, op=torch_dist.ReduceOp.MIN))
    return reduced


def all_gather_objects(info: DistInfo, value: _T) -> list[_T]:
    """Every rank's `value`, in rank order (picklable objects; small, e.g. RNG and data states)."""
    if not info.is_distributed:
        return [value]
    gathered: list[Any] = [None] * info.world_size
    guarded(info, "all_gather_object", lambda: torch_dist.all_gather_object(gathered, value))
    return gathered


def wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP over the default group: broadcasts rank 0's weights now, averages gradients in backward."""
    device_ids = [device.index] if device.type == "cuda" else None  # resolve_runtime sets cuda:LOCAL_RANK
    return DistributedDataParallel(model, device_ids=device_ids)


def shard_fsdp(model: nn.Module, blocks: list[nn.Module], device: torch.device) -> None:
    """FSDP2 in place: each block its own shard group, the rest (embeddings, head) the root's.

    Every rank must have built identical weights (same seed); fully_shard keeps each rank's
    slice of them and gathers full parameters only around each block's forward/backward."""
    from torch.distributed.fsdp import fully_shard

    mesh = torch_dist.device_mesh.init_device_mesh(device.type, (torch_dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


@contextlib.contextmanager
def fsdp_grad_sync(model: nn.Module, last_micro_step: bool) -> Generator[None]:
    """FSDP's `no_sync`: reduce-scatter gradients only after the last micro-step."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        raise TypeError("fsdp_grad_sync needs a model sharded with shard_fsdp")
    model.set_requires_gradient_sync(last_micro_step)
    yield


def _full_options(*, gather: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # gather: full tensors on rank 0's CPU (others get nothing); load: every rank has the full
    # state (each read the checkpoint) and keeps its own shard of it.
    return StateDictOptions(full_state_dict=True, cpu_offload=gather)


def fsdp_model_state(model: nn.Module) -> dict[str, Tensor]:
    """Full weights on rank 0 (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_full_options(gather=True))
    return {key: value for key, value in state.items() if isinstance(value, Tensor)}


def fsdp_load_model_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, dict[str, Any](state), options=_full_options(gather=False))


def fsdp_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name, on rank 0 (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if not optimizer.state:
        # Before the first step there is nothing to gather, and gathering would initialize the
        # state with a zero-gradient step (Adam's step count 1), changing the next update.
        return {"state": {}, "param_groups": []}
    state: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=_full_options(gather=True))
    return state


def fsdp_load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if not state.get("state"):
        return  # saved before the first step: the fresh optimizer is that state
    set_optimizer_state_dict(model, optimizer, state, options=_full_options(gather=False))
