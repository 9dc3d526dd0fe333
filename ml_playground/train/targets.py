"""What the loop trains: the `TrainingTarget` protocol and the GPT of `model.py` as a target.

The loop (loop.py) owns optimizer, schedule, precision, data and checkpoints; a target owns its
module, how it computes the loss, how its gradients sync under DDP/FSDP, and what of it a
checkpoint holds. LoRA's target lives next to LoRA (finetune/lora.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from ml_playground.errors import CheckpointError
from ml_playground.model import GPT, GPTConfig, ModelOutput
from ml_playground.train.distributed import (
    fsdp_grad_sync,
    fsdp_load_model_state,
    fsdp_load_optimizer_state,
    fsdp_model_state,
    fsdp_optimizer_state,
    shard_fsdp,
    wrap_ddp,
)
from ml_playground.train.metrics import palm_flops_per_token

Parallel = Literal["none", "ddp", "fsdp"]


class TrainingTarget(Protocol):
    """What the loop trains. The loop owns optimizer, schedule, precision, data and checkpoints."""

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The 2-D weights inside the transformer blocks (what `optimizer = "muon"` gives to Muon)."""
        ...

    def set_training(self, training: bool) -> None: ...

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean next-token loss of (B, T) inputs x and targets y (called under autocast)."""
        ...

    def grad_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        """Context for one micro-step's forward+backward (DDP: `no_sync` unless last)."""
        ...

    def model_state(self) -> dict[str, Tensor]:
        """Weights to checkpoint (without `_orig_mod.` prefixes)."""
        ...

    def load_model_state(self, state: dict[str, Tensor]) -> None: ...

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer.state_dict()`, or its full gather when parameters are sharded (FSDP)."""
        ...

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None: ...

    def architecture(self) -> GPTConfig:
        """The architecture a checkpoint records (as nanoGPT's `model_args`)."""
        ...

    def flops_per_token(self, context: int) -> float: ...

    def extra_state(self) -> dict[str, Any] | None:
        """Anything else a checkpoint must hold (e.g. adapter settings); JSON-like values."""
        ...

    def on_checkpoint(self, out_dir: Path, best: bool) -> None:
        """Called on rank 0 after each save (e.g. to write a PEFT adapter folder)."""
        ...

    def on_finish(self, out_dir: Path) -> None:
        """Called on rank 0 when the run ends normally (e.g. to write a merged model)."""
        ...


def load_optimizer_state_checked(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], *, sharded: bool, load: Callable[[], None]
) -> None:
    """Refuse optimizer state written by the other kind of run (FSDP's is keyed by name), then `load`."""
    if not state.get("param_groups"):
        return  # an FSDP run saved before its first step: the fresh optimizer is that state
    by_name = any(isinstance(key, str) for key in state.get("state", {}))  # FSDP's full state
    if by_name != sharded and state.get("state"):
        raise CheckpointError(
            f"optimizer state was written by {'an FSDP' if by_name else 'a DDP or single-process'} run: "
            f"resume it with train.runtime.parallel = {'fsdp' if by_name else 'ddp'!r} under torchrun "
            "(the weights alone load anywhere)"
        )
    try:
        load()
    except ValueError as exc:  # torch's group/size checks, MuonAdamW's group count
        raise CheckpointError(
            f"optimizer state does not fit this run's train.optim settings ({exc}); "
            "resume with the optimizer it was written with (the weights alone load anywhere)"
        ) from None


class GPTTarget:
    """The GPT of `model.py` as a training target; `compile` wraps the forward in torch.compile
    with static shapes.

    parallel (needs an open process group): "ddp" wraps the model in DistributedDataParallel,
    "fsdp" shards it in place with fully_shard (each block, then the root)."""

    def __init__(self, model: GPT, *, compile: bool = False, parallel: Parallel = "none"):
        self.model = model
        self.parallel = parallel
        module: nn.Module = model
        if parallel == "ddp":
            module = self.ddp = wrap_ddp(model, model.wte.weight.device)
        elif parallel == "fsdp":
            shard_fsdp(model, list(model.blocks), model.wte.weight.device)
        # dynamic=False: graphs specialised to the shapes this run trains and evaluates. By default
        # a shape GPT.forward saw earlier in the process (another run, a benchmark case) makes dynamo
        # recompile it with symbolic batch and time sizes ("automatic dynamic shapes").
        self.forward: Callable[..., ModelOutput] = torch.compile(module, dynamic=False) if compile else module

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def hidden_matrices(self) -> list[nn.Parameter]:
        """Attention and MLP matrices: the weights of the Linear modules of each block."""
        return [
            weight
            for block in self.model.blocks
            for module in block.modules()
            if isinstance(module, nn.Linear)
            and isinstance(weight := module.weight, nn.Parameter)
            and weight.requires_grad
        ]

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        loss = self.forward(x, y).loss
        if loss is None:  # pragma: no cover - GPT returns a loss whenever targets are given
            raise RuntimeError("GPT returned no loss for given targets")
        return loss

    def grad_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        if self.parallel == "ddp" and not last_micro_step:
            return self.ddp.no_sync()
        if self.parallel == "fsdp":
            return fsdp_grad_sync(self.model, last_micro_step)
        return contextlib.nullcontext()

    def model_state(self) -> dict[str, Tensor]:
        if self.parallel == "fsdp":
            return fsdp_model_state(self.model)
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        if self.parallel == "fsdp":
            fsdp_load_model_state(self.model, state)
        else:
            self.model.load_state_dict(state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self.parallel == "fsdp":
            return fsdp_optimizer_state(self.model, optimizer)
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        def load() -> None:
            if self.parallel == "fsdp":
                fsdp_load_optimizer_state(self.model, optimizer, state)
            else:
                optimizer.load_state_dict(state)

        load_optimizer_state_checked(optimizer, state, sharded=self.parallel == "fsdp", load=load)

    def architecture(self) -> GPTConfig:
        return self.model.config

    def flops_per_token(self, context: int) -> float:
        config = self.model.config
        return palm_flops_per_token(
            n_params=self.model.num_params(),
            n_layer=config.n_layer,
            n_head=config.n_head,
            head_size=config.head_size,
            context=context,
        )

    def extra_state(self) -> dict[str, Any] | None:
        return None

    def on_checkpoint(self, out_dir: Path, best: bool) -> None:
        return None

    def on_finish(self, out_dir: Path) -> None:
        return None
