"""`torchrun --nproc_per_node=N -m tests.support.nccl_rank DEVICE DTYPE REPORT`: each rank of a
process group on the backend the trainer picks for DEVICE (nccl for cuda), a GPT wrapped by the
trainer's `wrap_ddp`, and three AdamW steps of it on one batch beside the same steps of an unwrapped copy.

Every rank steps on the same batch, so DDP's gradient all-reduce (over the backend, bucket by
bucket) averages equal contributions (with one rank: one), and the wrapped model must end where
the copy does: bitwise where the device's
kernels are deterministic, otherwise within what a second plain run differs by. The trainer itself opens
no process group for a single rank, so this is where the backend is exercised on one GPU.
Rank 0 writes a JSON report: backend, device, world size, the weight differences, the losses.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist

from ml_playground.config import Device, DType, GPTConfig
from ml_playground.model import GPT
from ml_playground.runtime import resolve_runtime
from ml_playground.train.distributed import backend_for, dist_info_from_env, wrap_ddp


def _largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    with torch.no_grad():
        return max(float((p - q).abs().max()) for p, q in pairs)


def main(device_name: str, dtype_name: str, report: Path) -> None:
    info = dist_info_from_env()
    device: Device = "cuda" if device_name == "cuda" else "cpu"
    dtype: DType = "bfloat16" if dtype_name == "bfloat16" else "float32"
    runtime = resolve_runtime(device, dtype, info.local_rank)
    backend = backend_for(runtime.device)
    torch_dist.init_process_group(
        backend=backend,
        rank=info.rank,
        world_size=info.world_size,
        device_id=runtime.device if runtime.device.type == "cuda" else None,
    )
    try:
        torch.manual_seed(0)
        plain = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=32)).to(runtime.device)
        again, wrapped_model = copy.deepcopy(plain), copy.deepcopy(plain)
        wrapped = wrap_ddp(wrapped_model, runtime.device)
        modules: list[torch.nn.Module] = [plain, again, wrapped]
        optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (plain, again, wrapped_model)]
        losses: list[list[float]] = [[], [], []]
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(32, (4, 17), generator=generator).to(runtime.device)
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # one batch, learned step by step
        for _ in range(3):
            for i, (module, optimizer) in enumerate(zip(modules, optimizers, strict=True)):
                with runtime.autocast():
                    loss = module(x, y).loss
                assert loss is not None
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses[i].append(loss.item())
        result = {
            "backend": torch_dist.get_backend(),
            "chosen_backend": backend,
            "device": str(runtime.device),
            "world_size": torch_dist.get_world_size(),
            # The same plain steps twice: what the device's own nondeterminism (atomics in CUDA
            # attention backward) moves the weights by; 0 where the kernels are deterministic.
            "noise": _largest_difference(plain, again),
            "ddp_difference": _largest_difference(plain, wrapped_model),
            "plain_losses": losses[0],
            "ddp_losses": losses[2],
        }
    finally:
        torch_dist.destroy_process_group()
    if info.rank == 0:
        report.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
