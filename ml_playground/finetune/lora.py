"""LoRA finetuning of a Hugging Face causal LM (transformers + peft) on the generic trainer loop.

`LoRATarget` implements the trainer's `TrainingTarget`, so finetuning shares `fit`: schedule,
gradient accumulation, clipping, evaluation, ckpt_last/ckpt_best rules, auto-resume (adapter
weights, optimizer, RNG, data position) and the TensorBoard scalars. Checkpoints hold only the
adapter weights; after every save the adapter is also written in PEFT format:

  out_dir/adapter/       best adapter (adapter_config.json, adapter_model.safetensors)
  out_dir/adapter_last/  latest adapter
  out_dir/merged/        LoRA merged into the base (GPT-2 bases), when merge_on_save = true
"""

from __future__ import annotations

import contextlib
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
from ml_playground.config import PROJECT_ROOT, HFModelConfig, PeftConfig, SampleConfig, TrainConfig
from ml_playground.data.batches import BatchSource
from ml_playground.data.meta import DatasetMeta, read_meta
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.interop.export import ExportSource
from ml_playground.interop.hf import HFImport, export_hf, from_hf_state_dict, gpt_config_from_hf
from ml_playground.runtime import resolve_runtime, seed_everything
from ml_playground.tokenizers import tokenizer_from_meta
from ml_playground.train.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint
from ml_playground.train.distributed import dist_info_from_env
from ml_playground.train.metrics import palm_flops_per_token
from ml_playground.train.trainer import TrainResult, ensure_writable, fit

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
ADAPTER_LAST_DIR = "adapter_last"
MERGED_DIR = "merged"
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


def uses_conv1d(model: nn.Module, targets: tuple[str, ...]) -> bool:
    """GPT-2 stores its linear layers as Conv1D (weight (in, out)): LoRA needs fan_in_fan_out."""
    from transformers.pytorch_utils import Conv1D

    modules: list[tuple[str, nn.Module]] = list(model.named_modules())  # pyright: ignore[reportUnknownArgumentType]  # torch stub
    conv1d: type[nn.Module] = Conv1D
    return any(isinstance(m, conv1d) for name, m in modules if name.rsplit(".", 1)[-1] in targets)


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

    missing = [t for t in peft_cfg.target_modules if not any(n.endswith(f".{t}") for n, _ in base.named_modules())]
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


class LoRATarget:
    """A PEFT-wrapped causal LM as the trainer's TrainingTarget; only adapter weights train."""

    def __init__(self, model: Any, peft_cfg: PeftConfig, base_name: str):
        self.model = model
        self.peft_cfg = peft_cfg
        self.base_name = base_name

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        logits: Tensor = self.model(input_ids=x).logits  # (B, T, vocab)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    def grad_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def model_state(self) -> dict[str, Tensor]:
        from peft import get_peft_model_state_dict  # pyright: ignore[reportUnknownVariableType]  # untyped peft

        adapter: dict[str, Tensor] = get_peft_model_state_dict(self.model)
        return dict(adapter)

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        from peft import set_peft_model_state_dict  # pyright: ignore[reportUnknownVariableType]  # untyped peft

        result: Any = set_peft_model_state_dict(self.model, state)  # pyright: ignore[reportUnknownVariableType]
        unexpected: list[str] = list(getattr(result, "unexpected_keys", []))  # pyright: ignore[reportUnknownArgumentType]
        if unexpected:
            raise CheckpointError(f"checkpoint adapter has unexpected tensors: {', '.join(unexpected[:3])}")

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def model_args(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "n_layer": int(config.num_hidden_layers),
            "n_head": int(config.num_attention_heads),
            "n_embd": int(config.hidden_size),
            "block_size": int(config.max_position_embeddings),
            "bias": True,
            "vocab_size": int(config.vocab_size),
            "dropout": 0.0,
        }

    def flops_per_token(self, context: int) -> float:
        args = self.model_args()
        return palm_flops_per_token(
            n_params=sum(p.numel() for p in self.model.parameters()),
            n_layer=args["n_layer"],
            n_head=args["n_head"],
            head_size=args["n_embd"] // args["n_head"],
            context=context,
        )

    def extra_state(self) -> dict[str, Any] | None:
        peft = TypeAdapter(PeftConfig).dump_python(self.peft_cfg, mode="json")
        return {"kind": "lora", "base_model": self.base_name, "peft": peft}

    def on_checkpoint(self, out_dir: Path, best: bool) -> None:
        write_adapter(self.model, out_dir / ADAPTER_LAST_DIR, self.base_name)
        if best:
            write_adapter(self.model, out_dir / ADAPTER_DIR, self.base_name)


def check_compatible(cfg: TrainConfig, base: Any, meta: DatasetMeta) -> None:
    problems: list[str] = []
    if int(base.config.vocab_size) < meta.vocab_size:
        problems.append(f"base vocab_size {base.config.vocab_size} is smaller than the dataset's {meta.vocab_size}")
    context = int(base.config.max_position_embeddings)
    if cfg.data.block_size > context:
        problems.append(f"train.data.block_size {cfg.data.block_size} exceeds the base model's context {context}")
    if problems:
        raise ConfigError(f"train.hf_model.model_name_or_path: {'; '.join(problems)}")


def merged_gpt2(model: Any, meta: DatasetMeta) -> HFImport:
    """LoRA merged into a copy of the GPT-2 base, converted to our format (for export and sampling)."""
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    hf_cfg: dict[str, Any] = merged.config.to_dict()
    state = {name: t.detach().to("cpu", torch.float32) for name, t in merged.state_dict().items()}
    config = gpt_config_from_hf(hf_cfg, True, Path(str(hf_cfg.get("_name_or_path", "base")), "config.json"))
    return HFImport(state_dict=from_hf_state_dict(state, config, "merged model"), config=config, meta=meta)


def save_merged(model: Any, meta: DatasetMeta, out_dir: Path) -> Path:
    merged = merged_gpt2(model, meta)
    folder = out_dir / MERGED_DIR
    export_hf(merged.state_dict, merged.config, merged.meta, folder)
    return folder


def run_finetune(cfg: TrainConfig) -> TrainResult:
    """`make train` with [train.hf_model] + [train.peft]; auto-resumes from ckpt_last.pt."""
    if cfg.hf_model is None or cfg.peft is None:
        raise ConfigError("train.hf_model and train.peft are required for LoRA finetuning")
    dist = dist_info_from_env()
    runtime = resolve_runtime(cfg.runtime.device, cfg.runtime.dtype, dist.local_rank if dist.is_distributed else None)
    out_dir = cfg.runtime.out_dir
    if dist.is_main:
        ensure_writable(out_dir)
    meta = read_meta(cfg.data.meta_path)
    seed_everything(cfg.runtime.seed + dist.rank)
    base = load_base(cfg.hf_model)
    check_compatible(cfg, base, meta)
    model = with_adapter(base, cfg.peft).to(runtime.device)
    last = out_dir / LAST_NAME
    checkpoint = load_checkpoint(last) if last.exists() else None
    batches = BatchSource.for_run(cfg, meta.numpy_dtype, runtime.device, rank=dist.rank, world_size=dist.world_size)
    target = LoRATarget(model, cfg.peft, cfg.hf_model.model_name_or_path)
    trainable = sum(p.numel() for p in target.trainable_parameters())
    log.info("LoRA on %s: %d trainable parameters, out_dir %s", target.base_name, trainable, out_dir)
    result = fit(cfg, target, batches, runtime, dist=dist, dataset_meta=meta.to_dict(), resume_from=checkpoint)
    if cfg.hf_model.merge_on_save and dist.is_main:
        best = load_checkpoint(out_dir / BEST_NAME) if (out_dir / BEST_NAME).exists() else None
        if best is not None:
            target.load_model_state(best.model)
        log.info("merged model -> %s", save_merged(model, meta, out_dir))
    return result


def load_finetuned(train: TrainConfig, out_dir: Path) -> tuple[Any, DatasetMeta]:
    """Base + best adapter (PEFT format) from `out_dir/adapter`, in eval mode."""
    from peft import PeftModel

    if train.hf_model is None:
        raise ConfigError("train.hf_model is required to load a LoRA adapter")
    adapter = out_dir / ADAPTER_DIR
    if not (adapter / ADAPTER_CONFIG_FILE).is_file():
        raise CheckpointError(f"{adapter}: no LoRA adapter found (run `make train` first)")
    base = load_base(train.hf_model)
    with peft_compat():
        model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    return model, read_meta(train.data.meta_path)


def merged_export_source(train: TrainConfig) -> ExportSource:
    """For `make export`: base + best adapter merged, converted to our format."""
    out_dir = train.runtime.out_dir
    adapter = out_dir / ADAPTER_DIR
    files = sorted(p for p in adapter.glob("*") if p.is_file())
    if train.hf_model is not None:
        base = Path(train.hf_model.model_name_or_path)
        files += sorted(p for p in base.glob("*") if p.is_file() and p.suffix in {".json", ".safetensors"})
    if not files:
        raise CheckpointError(f"{adapter}: no LoRA adapter found (run `make train` first)")

    def load() -> HFImport:
        model, meta = load_finetuned(train, out_dir)
        return merged_gpt2(model, meta)

    return ExportSource(files=tuple(files), load=load)


@torch.no_grad()
def run_finetune_sampling(cfg: SampleConfig, train: TrainConfig) -> list[str]:
    """`make sample` for a finetuning experiment: base + adapter, HF generate with [sample.sample]."""
    settings = cfg.sample
    model, meta = load_finetuned(train, cfg.runtime.out_dir)
    tokenizer = tokenizer_from_meta(meta)
    prompt = settings.start
    ids = torch.tensor([tokenizer.encode(prompt)])
    torch.manual_seed(cfg.runtime.seed)
    greedy = settings.temperature == 0
    options: dict[str, Any] = {"do_sample": not greedy, "max_new_tokens": settings.max_new_tokens}
    if not greedy:
        options |= {"temperature": settings.temperature, "top_k": settings.top_k or 0, "top_p": settings.top_p or 1.0}
    samples: list[str] = []
    for _ in range(settings.num_samples):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
        text = tokenizer.decode(out[0].tolist())
        print(text)
        print("---------------")
        samples.append(text)
    return samples
