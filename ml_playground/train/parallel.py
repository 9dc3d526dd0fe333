"""The GPT as the loop runs it: compiled, replicated (DDP) or sharded (FSDP), or as it is.

`Parallel` wraps the model once and answers everything that depends on the wrapping: the forward
to call, the gradient sync of a micro-step, and full (gathered) weights and optimizer state for a
checkpoint. The loop never asks which wrapping it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ml_playground.errors import CheckpointError
from ml_playground.model import GPT, ModelOutput
from ml_playground.train.distributed import (
    fsdp_grad_sync,
    fsdp_load_model_state,
    fsdp_load_optimizer_state,
    fsdp_model_state,
    fsdp_optimizer_state,
    shard_fsdp,
    wrap_ddp,
)

Kind = Literal["none", "ddp", "fsdp"]


class Parallel:
    """`model` wrapped as `kind` says (needs an open process group for ddp/fsdp): "ddp" wraps it in
    DistributedDataParallel, "fsdp" shards it in place with fully_shard (each block, then the
    root). `compile` wraps the forward in torch.compile with static shapes."""

    def __init__(self, model: GPT, *, kind: Kind = "none", compile: bool = False):
        self.model = model
        self.kind = kind
        module: nn.Module = model
        if kind == "ddp":
            module = self.ddp = wrap_ddp(model, model.wte.weight.device)
        elif kind == "fsdp":
            shard_fsdp(model, list(model.blocks), model.wte.weight.device)
        # dynamic=False: graphs specialised to the shapes this run trains and evaluates. By default
        # a shape GPT.forward saw earlier in the process (another run, a benchmark case) makes dynamo
        # recompile it with symbolic batch and time sizes ("automatic dynamic shapes").
        self.forward: Callable[..., ModelOutput] = torch.compile(module, dynamic=False) if compile else module

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean next-token loss of (B, T) inputs x and targets y (called under autocast)."""
        loss = self.forward(x, y).loss
        if loss is None:  # pragma: no cover - GPT returns a loss whenever targets are given
            raise RuntimeError("GPT returned no loss for given targets")
        return loss

    def grad_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        """Context for one micro-step's forward+backward: gradients are reduced on the last only."""
        if self.kind == "ddp" and not last_micro_step:
            return self.ddp.no_sync()
        if self.kind == "fsdp":
            return fsdp_grad_sync(self.model, last_micro_step)
        return contextlib.nullcontext()

    def state_dict(self) -> dict[str, Tensor]:
        """Full weights (a collective under FSDP: every rank calls it; rank 0's are complete)."""
        if self.kind == "fsdp":
            return fsdp_model_state(self.model)
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load `state` into the model: every weight, or a part (a LoRA adapter) of them."""
        if self.kind == "fsdp":
            fsdp_load_model_state(self.model, state)
        else:
            self.model.load_state_dict(state, strict=False)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer.state_dict()`, or its full gather when parameters are sharded (FSDP)."""
        if self.kind == "fsdp":
            return fsdp_optimizer_state(self.model, optimizer)
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Refuse optimizer state written by the other kind of run (FSDP's is keyed by name)."""
        if not state.get("param_groups"):
            return  # an FSDP run saved before its first step: the fresh optimizer is that state
        sharded = self.kind == "fsdp"
        by_name = any(isinstance(key, str) for key in state.get("state", {}))  # FSDP's full state
        if by_name != sharded and state.get("state"):
            raise CheckpointError(
                f"optimizer state was written by {'an FSDP' if by_name else 'a DDP or single-process'} run: "
                f"resume it with train.runtime.parallel = {'fsdp' if by_name else 'ddp'!r} under torchrun "
                "(the weights alone load anywhere)"
            )
        try:
            if sharded:
                fsdp_load_optimizer_state(self.model, optimizer, state)
            else:
                optimizer.load_state_dict(state)
        except ValueError as exc:  # torch's group/size checks, MuonAdamW's group count
            raise CheckpointError(
                f"optimizer state does not fit this run's train.optim settings ({exc}); "
                "resume with the optimizer it was written with (the weights alone load anywhere)"
            ) from None
