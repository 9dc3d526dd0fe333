"""LoRA finetuning of a Hugging Face causal LM (transformers + peft) as a mode of the one run path.

`lora_target` builds a `LoRATarget` for `train.run.run`, so finetuning shares everything a run
has: torchrun/DDP, seeding, schedule, gradient accumulation, clipping, evaluation,
ckpt_last/ckpt_best rules, exact auto-resume (adapter weights, optimizer, RNG, data position) and
the TensorBoard scalars. Checkpoints hold only the adapter weights (a resume checks that they fit
[train.peft]); after every save the adapter is also written in PEFT format:

  out_dir/adapter/       best adapter (adapter_config.json, adapter_model.safetensors)
  out_dir/adapter_last/  latest adapter
  out_dir/merged/        with merge_on_save (GPT-2, Llama or Qwen3 bases: the architectures
                         `interop.hf` maps to ours), when the run ends: ckpt_best.pt's adapter
                         merged into a copy of the base, as a native checkpoint (ckpt_best.pt with
                         that checkpoint's step, val loss and run config, which `make sample` and
                         `make export` read like any other) and as a Hugging Face directory
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from pydantic import TypeAdapter
from safetensors.torch import save
from torch import Tensor, nn

from ml_playground.atomic import write_bytes_atomic, write_text_atomic
from ml_playground.config import PROJECT_ROOT, HFModelConfig, PeftConfig, TrainConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.interop.hf import IMPORTABLE, export_hf, from_hf_state_dict, gpt_config_from_hf
from ml_playground.model import GPTConfig
from ml_playground.train.checkpoint import (
    ADAPTER_KIND,
    BEST_NAME,
    LAST_NAME,
    MERGED_DIR,
    SCHEMA_VERSION,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ml_playground.train.distributed import wrap_ddp
from ml_playground.train.loop import TrainResult
from ml_playground.train.metrics import palm_flops_per_token
from ml_playground.train.run import RunContext, run
from ml_playground.train.targets import Parallel, load_optimizer_state_checked

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
ADAPTER_LAST_DIR = "adapter_last"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


def load_base(hf_model: HFModelConfig) -> Any:
    """The base causal LM in float32 (a local directory, or a hub name when online)."""
    from transformers import AutoModelForCausalLM

    name = hf_model.model_name_or_path
    local = PROJECT_ROOT / name  # a relative local directory means the same from any working directory
    try:
        return AutoModelForCausalLM.from_pretrained(str(local) if local.is_dir() else name, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"train.hf_model.model_name_or_path: cannot load {hf_model.model_name_or_path!r} ({first})"
        ) from None


def modules_named(model: nn.Module, target: str) -> list[nn.Module]:
    """The modules a peft `target_modules` entry selects: those whose last name part is `target`."""
    modules: list[tuple[str, nn.Module]] = list(model.named_modules())  # pyright: ignore[reportUnknownArgumentType]  # torch stub
    return [module for name, module in modules if name.rsplit(".", 1)[-1] == target]


def uses_conv1d(model: nn.Module, targets: tuple[str, ...]) -> bool:
    """GPT-2 stores its linear layers as Conv1D (weight (in, out)): LoRA needs fan_in_fan_out."""
    from transformers.pytorch_utils import Conv1D

    conv1d: type[nn.Module] = Conv1D
    return any(isinstance(m, conv1d) for target in targets for m in modules_named(model, target))


def lora_config(peft_cfg: PeftConfig, *, fan_in_fan_out: bool) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=peft_cfg.r,
        lora_alpha=peft_cfg.lora_alpha,
        lora_dropout=peft_cfg.lora_dropout,
        bias=peft_cfg.bias,
        target_modules=list(peft_cfg.target_modules),
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM",
    )


@contextlib.contextmanager
def peft_compat() -> Generator[None]:
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`; that FutureWarning is
    theirs to fix, so it is ignored around peft calls (and only that one)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def with_adapter(base: Any, peft_cfg: PeftConfig) -> Any:
    from peft import get_peft_model

    selected = {target: modules_named(base, target) for target in peft_cfg.target_modules}
    tied = base.get_output_embeddings()
    if tied is not None and tied.weight is base.get_input_embeddings().weight:
        for target, modules in selected.items():
            if any(module is tied for module in modules):
                raise ConfigError(
                    f"train.peft.target_modules: {target} shares its weight with the token embedding "
                    "(tied), so an adapter on it cannot be merged; leave it out"
                )
    missing = [target for target, modules in selected.items() if not modules]
    if missing:
        raise ConfigError(f"train.peft.target_modules: no module named {', '.join(missing)} in the base model")
    config = lora_config(peft_cfg, fan_in_fan_out=uses_conv1d(base, peft_cfg.target_modules))
    with peft_compat():
        wrapped: Any = get_peft_model(base, config)  # pyright: ignore[reportUnknownVariableType]  # untyped peft
    return wrapped  # pyright: ignore[reportUnknownVariableType]  # untyped peft


def write_adapter(model: Any, folder: Path, base_name: str) -> None:
    """PEFT format (loadable by PeftModel.from_pretrained), each file written atomically."""
    from peft import get_peft_model_state_dict  # pyright: ignore[reportUnknownVariableType]  # untyped peft

    adapter: dict[str, Tensor] = get_peft_model_state_dict(model)
    state = {name: t.detach().to("cpu").contiguous() for name, t in adapter.items()}
    config: dict[str, Any] = model.peft_config["default"].to_dict()
    config = {key: sorted(cast("set[str]", v)) if isinstance(v, set) else v for key, v in config.items()}
    config |= {"base_model_name_or_path": base_name, "inference_mode": True}
    write_bytes_atomic(folder / ADAPTER_WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    write_text_atomic(folder / ADAPTER_CONFIG_FILE, json.dumps(config, indent=2, default=str) + "\n")


def refuse_fsdp(parallel: Parallel) -> None:
    if parallel == "fsdp":
        raise ConfigError("train.runtime.parallel: 'fsdp' is not supported for LoRA finetuning; use 'ddp'")


class LoRATarget:
    """A PEFT-wrapped causal LM as the loop's TrainingTarget; only adapter weights train.

    parallel "ddp" (needs an open process group) wraps it in DistributedDataParallel: the frozen
    base is identical on every rank, the adapter's gradients are averaged."""

    def __init__(
        self,
        model: Any,
        peft_cfg: PeftConfig,
        base_name: str,
        *,
        parallel: Parallel = "none",
        merge_meta: DatasetMeta | None = None,
    ):
        self.model = model
        self.peft_cfg = peft_cfg
        self.base_name = base_name
        self.parallel = parallel
        # With merge_on_save, the tokenizer the merged checkpoint carries; None: no merge at the end.
        self.merge_meta = merge_meta
        self.forward: nn.Module = model
        refuse_fsdp(parallel)
        if parallel == "ddp":
            self.forward = self.ddp = wrap_ddp(model, next(model.parameters()).device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def hidden_matrices(self) -> list[nn.Parameter]:
        return []  # LoRA runs train with AdamW only (config validation refuses "muon")

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        logits: Tensor = self.forward(input_ids=x).logits  # (B, T, vocab)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    def grad_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        if self.parallel == "ddp" and not last_micro_step:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def model_state(self) -> dict[str, Tensor]:
        from peft import get_peft_model_state_dict  # pyright: ignore[reportUnknownVariableType]  # untyped peft

        adapter: dict[str, Tensor] = get_peft_model_state_dict(self.model)
        return dict(adapter)

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        """Adapter weights of the same LoRA settings (DDP shares the parameters, so every rank loads)."""
        mismatch = adapter_mismatch(state, self.model_state())
        if mismatch:
            raise CheckpointError(f"checkpoint adapter does not fit train.peft: {mismatch}")
        load_adapter_state(self.model, state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        load_optimizer_state_checked(optimizer, state, sharded=False, load=lambda: optimizer.load_state_dict(state))

    def architecture(self) -> GPTConfig:
        """The base as our options where it is one of our architectures, else its shape alone."""
        config = self.model.config
        if config.model_type in IMPORTABLE:
            return base_architecture(config.to_dict())
        return GPTConfig(
            n_layer=int(config.num_hidden_layers),
            n_head=int(config.num_attention_heads),
            n_embd=int(config.hidden_size),
            block_size=int(config.max_position_embeddings),
            bias=True,
            vocab_size=int(config.vocab_size),
            dropout=0.0,
        )

    def flops_per_token(self, context: int) -> float:
        arch = self.architecture()
        return palm_flops_per_token(
            n_params=sum(p.numel() for p in self.model.parameters()),
            n_layer=arch.n_layer,
            n_head=arch.n_head,
            head_size=arch.head_size,
            context=context,
        )

    def extra_state(self) -> dict[str, Any] | None:
        peft = TypeAdapter(PeftConfig).dump_python(self.peft_cfg, mode="json")
        return {"kind": ADAPTER_KIND, "base_model": self.base_name, "peft": peft}

    def on_checkpoint(self, out_dir: Path, best: bool) -> None:
        write_adapter(self.model, out_dir / ADAPTER_LAST_DIR, self.base_name)
        if best:
            write_adapter(self.model, out_dir / ADAPTER_DIR, self.base_name)

    def on_finish(self, out_dir: Path) -> None:
        """With merge_on_save: the best adapter merged into the base -> out_dir/merged/.

        Merged from a copy: the trained model (on rank 0, the same as on every other rank) keeps
        the weights the run ended with."""
        if self.merge_meta is None:
            return
        best_path = out_dir / BEST_NAME
        if not best_path.is_file():
            log.warning("no %s in %s (no evaluation saved one): nothing to merge", BEST_NAME, out_dir)
            return
        best = load_checkpoint(best_path)
        mismatch = adapter_mismatch(best.model, self.model_state())
        if mismatch:
            raise CheckpointError(f"{best_path}: adapter does not fit train.peft: {mismatch}")
        log.info("merged model -> %s", save_merged(self.model, self.merge_meta, out_dir / MERGED_DIR, source=best))


def load_adapter_state(model: Any, state: dict[str, Tensor]) -> None:
    """Copy adapter weights (peft's names, as `get_peft_model_state_dict` gives them) into `model`."""
    from peft import set_peft_model_state_dict  # pyright: ignore[reportUnknownVariableType]  # untyped peft

    set_peft_model_state_dict(model, state)


def adapter_mismatch(state: dict[str, Tensor], own: dict[str, Tensor]) -> str:
    """How saved adapter weights differ from this model's adapter in names and shapes ("" when they fit)."""
    problems: list[str] = []
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    shapes = [
        f"{name} {tuple(state[name].shape)} vs {tuple(own[name].shape)} here"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape(s) differ, e.g. {shapes[0]}")
    return "; ".join(problems)


def check_compatible(cfg: TrainConfig, base: Any, meta: DatasetMeta) -> None:
    problems: list[str] = []
    if int(base.config.vocab_size) < meta.vocab_size:
        problems.append(f"base vocab_size {base.config.vocab_size} is smaller than the dataset's {meta.vocab_size}")
    context = int(base.config.max_position_embeddings)
    if cfg.data.block_size > context:
        problems.append(f"train.data.block_size {cfg.data.block_size} exceeds the base model's context {context}")
    if cfg.hf_model is not None and cfg.hf_model.merge_on_save and base.config.model_type not in IMPORTABLE:
        problems.append(
            f"merge_on_save needs a base of model_type {', '.join(map(repr, IMPORTABLE))} "
            f"(found {base.config.model_type!r}); set merge_on_save = false to train the adapter alone"
        )
    if problems:
        raise ConfigError(f"train.hf_model.model_name_or_path: {'; '.join(problems)}")


def base_architecture(hf_cfg: dict[str, Any]) -> GPTConfig:
    """Our architecture of a GPT-2 (biases kept: HF GPT-2 has them), Llama or Qwen3 base."""
    return gpt_config_from_hf(hf_cfg, True, Path(str(hf_cfg.get("_name_or_path", "base")), "config.json"))


def merged_model(model: Any, adapter: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], GPTConfig]:
    """LoRA (the model's own, or `adapter`) merged into a copy of the GPT-2, Llama or Qwen3 base, as
    our state dict and architecture (through `interop.hf`'s key maps); `model` itself is left as it is."""
    copied = copy.deepcopy(model)
    if adapter is not None:
        load_adapter_state(copied, adapter)
    merged = copied.merge_and_unload()
    config = base_architecture(merged.config.to_dict())
    state = {name: t.detach().to("cpu", torch.float32) for name, t in merged.state_dict().items()}
    return from_hf_state_dict(state, config, "merged model"), config


def save_merged(model: Any, meta: DatasetMeta, folder: Path, *, source: Checkpoint) -> Path:
    """The adapter of `source` (a checkpoint of this run) merged into the base: `folder/ckpt_best.pt`
    (native, for sampling and export; with the source's step, val loss and run config) and the same
    model as an HF directory."""
    state_dict, config = merged_model(model, source.model)
    checkpoint = Checkpoint(
        schema_version=SCHEMA_VERSION,
        model=state_dict,
        arch=config,
        iter_num=source.iter_num,
        best_val_loss=source.best_val_loss,
        config=source.config,
        dataset_meta=meta.to_dict(),
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / BEST_NAME, checkpoint)
    export_hf(state_dict, config, meta, folder)
    return folder


def check_resumable(checkpoint: Checkpoint, path: Path, target: LoRATarget) -> None:
    """The resume checkpoint must hold an adapter of the configured LoRA settings."""
    if not checkpoint.is_adapter:
        raise CheckpointError(
            f"{path}: holds a whole model, not a LoRA adapter; give the LoRA run its own train.runtime.out_dir"
        )
    mismatch = adapter_mismatch(checkpoint.model, target.model_state())
    if mismatch:
        raise CheckpointError(
            f"{path}: adapter does not fit train.peft ({mismatch}); resume with the settings it was "
            "written with, or use another train.runtime.out_dir"
        )


def lora_target(ctx: RunContext) -> LoRATarget:
    """The run's mode for [train.hf_model] + [train.peft]: base + fresh adapter on the run's device."""
    cfg = ctx.cfg
    if cfg.hf_model is None or cfg.peft is None:
        raise ConfigError("train.hf_model and train.peft are required for LoRA finetuning")
    refuse_fsdp(ctx.parallel)  # before every rank loads the base
    base = load_base(cfg.hf_model)
    check_compatible(cfg, base, ctx.meta)
    model = with_adapter(base, cfg.peft).to(ctx.runtime.device)
    merge_meta = ctx.meta if cfg.hf_model.merge_on_save else None
    target = LoRATarget(model, cfg.peft, cfg.hf_model.model_name_or_path, parallel=ctx.parallel, merge_meta=merge_meta)
    if ctx.checkpoint is not None:
        check_resumable(ctx.checkpoint, cfg.runtime.out_dir / LAST_NAME, target)
    trainable = sum(p.numel() for p in target.trainable_parameters())
    log.info("LoRA on %s: %d trainable parameters", target.base_name, trainable)
    return target


def run_finetune(cfg: TrainConfig) -> TrainResult:
    """`make train` with [train.hf_model] + [train.peft]; auto-resumes from ckpt_last.pt."""
    return run(cfg, lora_target)
