"""Configuration schema: frozen, slotted, keyword-only dataclasses, one per TOML table, and the
architecture `GPTConfig`, a frozen pydantic model that is both [train.model]'s schema (as its
subclass `ModelConfig`) and what the model is built from.

Validation (types, ranges, unknown keys) is done by pydantic in strict mode: no silent
str -> int coercion; an int is accepted where a float is expected. Only `config_loader` reads
TOML; everything else receives these objects. This module does not import torch.

Relative paths resolve against PROJECT_ROOT (the folder that holds the `ml_playground`
package), so a config means the same thing from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

PROJECT_ROOT = Path(__file__).resolve().parent.parent

STRICT = ConfigDict(extra="forbid", strict=True)

Device = Literal["cpu", "mps", "cuda"]
DType = Literal["float32", "bfloat16", "float16"]


def project_path(path: str | Path) -> Path:
    """`path` with `~` expanded; a relative path is taken from PROJECT_ROOT, so it means the same
    from any working directory."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def _not_blank(value: object) -> object:
    # "" would be PROJECT_ROOT itself: a run's files would land among the project's own.
    if isinstance(value, str) and not value.strip():
        raise ValueError("empty path; name a file or folder (a relative path is taken from the project root)")
    return value


def _not_a_file(path: Path) -> Path:
    if path.is_file():
        raise ValueError(f"{path} is a file, not a folder; name a folder (or move the file)")
    return path


# A path given as a TOML string, resolved by `project_path`; an empty string is an error.
ProjectPath = Annotated[Path, Field(strict=False), BeforeValidator(_not_blank), AfterValidator(project_path)]
# A folder the command reads or writes: a ProjectPath that is not an existing file.
FolderPath = Annotated[ProjectPath, AfterValidator(_not_a_file)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class PrepareConfig:
    """[prepare]: where the corpus comes from and how it is tokenized."""

    dataset_dir: FolderPath
    # "bundled" (the experiment's offline corpus), an http(s):// or file:// URL, or a file path: one
    # text, read as today. A folder, a glob ("corpus/*.parquet"), or a file of documents (.jsonl,
    # .jsonl.gz, .jsonl.zst, .parquet) is a document corpus, prepared in shards by `workers`.
    source: str = "bundled"
    # A file read when the file `source` names does not exist (a corpus another experiment reads,
    # so that one copy serves both); `source` wins whenever it exists. Only for a file `source`.
    fallback_source: str | None = None
    source_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    download_timeout_s: float = Field(default=60.0, gt=0)
    tokenizer: Literal["char", "tiktoken", "bpe", "huggingface"] = "char"
    encoding: str = "gpt2"  # tokenizer "tiktoken"
    # tokenizer "bpe": a byte-level BPE trained on the first tokenizer_train_bytes of the corpus, with
    # <|endoftext|> and special_tokens, the 256 bytes and merges up to vocab_size ids in all.
    vocab_size: int | None = Field(default=None, ge=258, le=2**32)
    special_tokens: tuple[str, ...] = ()
    tokenizer_train_bytes: PositiveInt = 100_000_000
    # tokenizer "huggingface": a pretrained model's tokenizer (a local folder or a hub model id).
    tokenizer_from: str | None = None
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    # Document corpora: the JSON key or parquet column that holds each document's text.
    text_field: str = Field(default="text", min_length=1)
    # Document corpora: tokenizing processes (default: one per core); the output is the same for any number.
    workers: PositiveInt = Field(default_factory=lambda: os.cpu_count() or 1)
    # Document corpora: tokens per shard file (the last shard of each split holds the rest).
    shard_tokens: PositiveInt = 100_000_000

    @model_validator(mode="after")
    def _tokenizer_keys(self) -> Self:
        problems: list[str] = []
        if (self.tokenizer == "bpe") != (self.vocab_size is not None):
            problems.append("vocab_size is required for tokenizer 'bpe' and only read for it")
        if self.special_tokens and self.tokenizer != "bpe":
            problems.append("special_tokens is only read for tokenizer 'bpe'")
        if (self.tokenizer == "huggingface") != (self.tokenizer_from is not None):
            problems.append("tokenizer_from is required for tokenizer 'huggingface' and only read for it")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _fallback_is_a_file(self) -> Self:
        if self.fallback_source is None:
            return self
        problems: list[str] = []
        if self.source == "bundled" or self.source.startswith(("http://", "https://")):
            problems.append(f"fallback_source is only read for a file source, not {self.source!r}")
        if self.fallback_source == "bundled" or self.fallback_source.startswith(("http://", "https://")):
            problems.append(f"fallback_source must be a file path, not {self.fallback_source!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


Position = Literal["learned", "rope"]
Norm = Literal["layernorm", "rmsnorm"]
MLPKind = Literal["gelu", "swiglu", "relu2"]


def _mlp_width(data: dict[str, Any]) -> int:
    """The MLP's hidden width when mlp_hidden is not given: 8/3 x n_embd rounded up to a multiple of
    mlp_multiple for swiglu (about the parameters of a 4 x n_embd GELU MLP), else 4 x n_embd.
    pydantic calls a default factory only when every key before it is valid."""
    n_embd: int = data["n_embd"]
    if data["mlp"] != "swiglu":
        return 4 * n_embd
    multiple: int = data["mlp_multiple"]
    return -(-(8 * n_embd) // (3 * multiple)) * multiple


def _split_width(data: dict[str, Any]) -> int:
    """n_embd / n_head (the shape rules refuse a width that does not divide)."""
    n_embd: int = data["n_embd"]
    n_head: int = data["n_head"]
    return n_embd // n_head


def _one_kv_head_per_head(data: dict[str, Any]) -> int:
    n_head: int = data["n_head"]
    return n_head


def _every_row_a_token(data: dict[str, Any]) -> int:
    vocab_size: int = data["vocab_size"]
    return vocab_size


class RopeScaling(BaseModel):
    """Llama 3's rule for a longer context (Hugging Face `rope_type = "llama3"`): rotary frequencies
    whose wavelength exceeds original_max_position_embeddings / low_freq_factor are divided by
    `factor`, those below original_max_position_embeddings / high_freq_factor kept, the ones between
    blended smoothly. The values are Llama 3.2's."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    rope_type: Literal["llama3"] = "llama3"
    factor: float = Field(default=32.0, gt=0)
    low_freq_factor: float = Field(default=1.0, gt=0)
    high_freq_factor: float = Field(default=4.0, gt=0)
    original_max_position_embeddings: PositiveInt = 8192

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor ({self.high_freq_factor}) must exceed low_freq_factor ({self.low_freq_factor})"
            )
        return self


class GPTConfig(BaseModel):
    """The architecture (nanoGPT's names): what `model.GPT` is built from, the keys of
    [train.model] and what a checkpoint stores. The defaults are GPT-2's block; the options switch on
    the newer parts one at a time (Llama = rope + rmsnorm + swiglu, no bias). Every size is a
    number once built: the ones left out follow the keys they depend on."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    n_layer: PositiveInt = 6
    n_head: PositiveInt = 6
    n_embd: PositiveInt = 384
    block_size: PositiveInt = 256
    # Rows of the token embedding and the output head, possibly padded past the tokenizer's ids
    # (GPT-2's 50257 -> 50304, as nanoGPT pads it, gives the head's matmul a fast width).
    vocab_size: PositiveInt = 50304
    dropout: float = Field(default=0.0, ge=0, lt=1)
    bias: bool = False
    # Biases on the query, key and value projections only (Qwen2); `bias` puts them on every linear.
    qkv_bias: bool = False
    # Positions: "learned" embeddings (GPT-2) or "rope" (rotary, on queries and keys; needs an even
    # head_dim) with base rope_theta, its frequencies rescaled by rope_scaling (Llama 3's rule) when set.
    position: Position = "learned"
    rope_theta: float = Field(default=10000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    # "layernorm" (GPT-2; with a bias when bias = true) or "rmsnorm" (Llama); norm_eps for both.
    norm: Norm = "layernorm"
    norm_eps: float = Field(default=1e-5, gt=0)
    # MLP: "gelu" (GPT-2), "swiglu" (Llama: silu(gate) * up, two projections of width mlp_hidden)
    # or "relu2" (relu(x)^2). mlp_hidden defaults to 4 x n_embd, or for swiglu 8/3 x n_embd
    # rounded up to a multiple of mlp_multiple.
    mlp: MLPKind = "gelu"
    mlp_multiple: PositiveInt = 64
    mlp_hidden: PositiveInt = Field(default_factory=_mlp_width)
    # RMSNorm of each head's queries and keys before attention (Qwen3's q_norm / k_norm).
    qk_norm: bool = False
    # Width of each attention head; default n_embd / n_head. Set, the attention is n_head x head_dim
    # wide whatever n_embd is (Qwen3-0.6B: 16 heads of 128 in a width of 1024).
    head_dim: PositiveInt = Field(default_factory=_split_width)
    # Key/value heads (grouped-query attention; must divide n_head); default: one per query head.
    n_kv_head: PositiveInt = Field(default_factory=_one_kv_head_per_head)
    # false: the output head has its own weights instead of sharing the token embedding's.
    tie_embeddings: bool = True
    # Logits become logit_softcap * tanh(logits / logit_softcap); 0 = off. `examples`: a cap that
    # switches it on (modded-nanogpt's records have used 30 and 15).
    logit_softcap: float = Field(default=0.0, ge=0, examples=[15.0])
    # The tokenizer's ids are 0..real_vocab_size-1; rows past them get -inf logits (never sampled,
    # no loss, no gradient) and exports drop them. Default: every row is a token.
    real_vocab_size: PositiveInt = Field(default_factory=_every_row_a_token)

    @model_validator(mode="after")
    def _shapes_fit(self) -> Self:
        problems = self._shape_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _shape_problems(self) -> list[str]:
        """The cross-key rules, each broken one as a line."""
        problems: list[str] = []
        if "head_dim" not in self.model_fields_set and self.n_embd % self.n_head != 0:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}), or set head_dim")
        elif self.position == "rope" and self.head_dim % 2 != 0:
            given = "head_dim" if "head_dim" in self.model_fields_set else "n_embd / n_head"
            problems.append(f"position = 'rope' needs an even head size, but {given} = {self.head_dim}")
        if self.rope_scaling is not None and self.position != "rope":
            problems.append("rope_scaling needs position = 'rope'")
        if self.n_head % self.n_kv_head != 0:
            problems.append(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.real_vocab_size > self.vocab_size:
            problems.append(f"real_vocab_size ({self.real_vocab_size}) exceeds vocab_size ({self.vocab_size})")
        return problems

    def replace(self, **changes: Any) -> Self:
        """This configuration with `changes`, validated again; a size that was left to its default
        follows the new values (replace(n_head=4) keeps one key/value head per head)."""
        return type(self)(**{key: getattr(self, key) for key in self.model_fields_set} | changes)


class ModelConfig(GPTConfig):
    """[train.model]: the architecture, and how a run starts it. Left out, vocab_size is the
    dataset's vocabulary (it may not be smaller); the run pads it up to vocab_multiple (1 keeps the
    size) and masks the rows past the dataset's ids. real_vocab_size is the dataset's, never a key."""

    # Initial weights (nanoGPT's name): "scratch" (random), or a pretrained source whose weights are
    # all finetuned: a Hugging Face model id (downloaded; needs the network), a local Hugging Face
    # directory (GPT-2, Llama, Qwen2, Qwen3) or a checkpoint file (ours, or nanoGPT's ckpt.pt). The
    # architecture is the source's: the keys set here must agree with it, except dropout, which
    # overrides it. ckpt_last.pt in out_dir still wins (resume).
    init_from: str = Field(default="scratch", min_length=1)
    vocab_multiple: PositiveInt = 64

    @field_validator("real_vocab_size", mode="before")
    @classmethod
    def _not_a_key(cls, value: object) -> object:
        raise ValueError("not a [train.model] key: the run takes the tokens from the dataset's vocabulary")

    def _shape_problems(self) -> list[str]:
        if self.init_from != "scratch":  # the source's shapes hold; keys set here are checked against them
            return []
        return super()._shape_problems()

    def architecture(self, **changes: Any) -> GPTConfig:
        """The architecture these keys give, with `changes` (what a run builds its GPT from; no
        init_from or vocab_multiple). Sizes left out follow the changed values, as in `replace`."""
        fields = GPTConfig.model_fields
        return GPTConfig(**{key: getattr(self, key) for key in self.model_fields_set if key in fields} | changes)


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class DataConfig:
    """[train.data]: prepared dataset files and batch shape. `meta_pkl` is the metadata file
    (JSON, or a legacy nanoGPT pickle), named as in nanoGPT."""

    dataset_dir: FolderPath
    train_bin: str = "train.bin"
    val_bin: str = "val.bin"
    # The dataset's metadata file (vocabulary, tokenizer), whatever its format: our "meta.json" or a
    # legacy nanoGPT "meta.pkl" (read by the restricted unpickler). The key keeps nanoGPT's name.
    meta_pkl: str = "meta.json"
    batch_size: PositiveInt = 12
    block_size: PositiveInt = 64
    # Micro-steps per rank and optimizer step: global batch = batch_size x grad_accum_steps x ranks.
    grad_accum_steps: PositiveInt = 1
    # Sequences per optimizer step over all ranks; when set, grad_accum_steps is derived from it
    # (it must divide by batch_size x world size) and must be left at 1.
    global_batch_size: PositiveInt | None = None
    # random: nanoGPT's random windows; shuffled/sequential: each window once per epoch.
    sampler: Literal["random", "shuffled", "sequential"] = "random"

    @model_validator(mode="after")
    def _one_batch_rule(self) -> Self:
        if self.global_batch_size is None:
            return self
        if self.grad_accum_steps != 1:
            raise ValueError("set global_batch_size or grad_accum_steps, not both (one is derived from the other)")
        if self.global_batch_size % self.batch_size != 0:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) is not divisible by batch_size ({self.batch_size})"
            )
        return self

    @property
    def train_path(self) -> Path:
        return self.dataset_dir / self.train_bin

    @property
    def val_path(self) -> Path:
        return self.dataset_dir / self.val_bin

    @property
    def meta_path(self) -> Path:
        return self.dataset_dir / self.meta_pkl


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class OptimConfig:
    """[train.optim]: AdamW, or Muon on the hidden matrices with AdamW on the rest."""

    # "adamw": AdamW on every parameter. "muon": Muon (torch.optim.Muon's update, orthogonalised in
    # float32 off CUDA: train/optim.py BatchedMuon) on the 2-D weights inside the
    # transformer blocks (attention and MLP matrices); AdamW (learning_rate, weight_decay, betas)
    # on embeddings, the tied output head, norms and biases. Not with FSDP or LoRA.
    optimizer: Literal["adamw", "muon"] = "adamw"
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, ge=0)  # 0 disables clipping
    # Muon's peak rate; the schedule scales it by the same factor as learning_rate.
    muon_learning_rate: float = Field(default=0.02, gt=0)
    muon_weight_decay: float = Field(default=0.0, ge=0)  # decoupled, as AdamW's
    muon_momentum: float = Field(default=0.95, ge=0, lt=1)
    muon_nesterov: bool = True
    muon_ns_steps: PositiveInt = 5  # Newton-Schulz iterations of the orthogonalisation
    # Per-matrix rate scaling (torch.optim.Muon adjust_lr_fn): "original" max(1, rows/cols)**0.5;
    # "match_rms_adamw" 0.2 * max(rows, cols)**0.5, so AdamW-sized rates and decay carry over.
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = "original"


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class ScheduleConfig:
    """[train.schedule]: linear warmup then cosine decay to min_lr."""

    decay_lr: bool = True
    warmup_iters: NonNegativeInt = 100
    lr_decay_iters: PositiveInt = 5000
    min_lr: float = Field(default=1e-4, ge=0)


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class TrainRuntimeConfig:
    """[train.runtime]: loop length, evaluation, checkpoints, device."""

    out_dir: FolderPath
    max_iters: NonNegativeInt = 5000
    eval_interval: PositiveInt = 250
    eval_iters: PositiveInt = 200
    log_interval: PositiveInt = 10
    eval_only: bool = False
    always_save_checkpoint: bool = False
    seed: int = 1337
    device: Device = "cpu"
    dtype: DType = "float32"
    compile: bool = False
    # Under torchrun (WORLD_SIZE > 1): ddp replicates the model on every rank; fsdp shards
    # parameters, gradients and optimizer state over the ranks (torch fully_shard).
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # Seconds any collective may wait for the other ranks before the job fails (no hang).
    dist_timeout_s: float = Field(default=300.0, gt=0)
    # Peak FLOP/s for MFU; None: a matmul probe of the used dtype, measured once per machine (cached).
    peak_flops: float | None = Field(default=None, gt=0)


# LoRA targets: our module names (a name matches every module whose path ends with it), in a
# fixed order. `c_proj` is both attn.c_proj and mlp.c_proj.
LORA_MODULES = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj", "lm_head")
LORA_ALIASES: dict[str, tuple[str, ...]] = {"c_proj": ("attn.c_proj", "mlp.c_proj")}
# Hugging Face Llama/Qwen2/Qwen3 names: fused modules of ours need the whole group that they fuse.
HF_LORA_GROUPS: dict[tuple[str, ...], str] = {
    ("q_proj", "k_proj", "v_proj"): "c_attn",
    ("o_proj",): "attn.c_proj",
    ("gate_proj", "up_proj"): "c_fc",
    ("down_proj",): "mlp.c_proj",
}


def lora_modules(names: tuple[str, ...]) -> tuple[str, ...]:
    """`target_modules` as our module names (LORA_MODULES order); Hugging Face names map onto the
    fused modules they make up, and a part of a fused module alone is refused."""
    wanted = set(names)
    ours: set[str] = set()
    problems: list[str] = []
    for group, module in HF_LORA_GROUPS.items():
        present = wanted.intersection(group)
        if present and len(present) < len(group):
            problems.append(
                f"{' + '.join(sorted(present))} without {' + '.join(n for n in group if n not in present)}: "
                f"our {module} fuses {' | '.join(group)} into one layer, so name all of them (or {module})"
            )
        if present:
            ours.add(module)
        wanted -= present
    for name in wanted:
        if name in LORA_MODULES or name in LORA_ALIASES:
            ours.update(LORA_ALIASES.get(name, (name,)))
        else:
            problems.append(
                f"unknown module {name!r}; targets are {', '.join(LORA_MODULES)}, c_proj (both), or "
                f"Hugging Face's {', '.join(n for group in HF_LORA_GROUPS for n in group)}"
            )
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(module for module in LORA_MODULES if module in ours)


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class PeftConfig:
    """[train.peft]: LoRA on the base that [train.model] init_from names; its presence selects LoRA."""

    r: PositiveInt = 8
    lora_alpha: PositiveInt = 16
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    # Our module names, or Hugging Face's (see `lora_modules`); our names once loaded.
    target_modules: Annotated[tuple[str, ...], Field(min_length=1), AfterValidator(lora_modules)] = (
        "c_attn",
        "attn.c_proj",
        "c_fc",
        "mlp.c_proj",
    )
    # After training, merge the best adapter into the base and write it to out_dir/merged/ as a
    # native checkpoint (what `make sample` and `make export` read), and, for a Hugging Face base,
    # as a Hugging Face directory.
    merge_on_save: bool = True


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class EvalSettings:
    """What lm-evaluation-harness runs on a model: `tasks` are lm-eval task, group or tag names
    (`hellaswag`, `arc_easy`; the hub's datasets need the network) or task YAML files; `text` a
    UTF-8 file whose bits per byte are measured."""

    tasks: tuple[str, ...] = ()
    num_fewshot: NonNegativeInt | None = None  # None: each task's own
    limit: PositiveInt | None = None  # documents per task; None: all
    batch_size: PositiveInt = 8
    text: ProjectPath | None = None

    @model_validator(mode="after")
    def _something_to_do(self) -> Self:
        if not self.tasks and self.text is None:
            raise ValueError("name tasks, a text file, or both")
        return self


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class TrainEvalConfig(EvalSettings):
    """[train.eval]: the same evaluation every `every` steps of training (rank 0; the others wait)."""

    every: PositiveInt


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class TrainConfig:
    """[train]: the generic trainer; [train.model] init_from finetunes a pretrained model, wholly,
    or with LoRA when [train.peft] is present."""

    data: DataConfig
    runtime: TrainRuntimeConfig
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    peft: PeftConfig | None = None
    eval: TrainEvalConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        pretrained = self.model.init_from != "scratch"
        if not pretrained and self.data.block_size > self.model.block_size:
            problems.append(
                f"data.block_size ({self.data.block_size}) exceeds model.block_size ({self.model.block_size})"
            )
        if self.schedule.min_lr > self.optim.learning_rate:
            problems.append(
                f"schedule.min_lr ({self.schedule.min_lr}) exceeds optim.learning_rate ({self.optim.learning_rate})"
            )
        if self.peft is not None and not pretrained:
            problems.append("peft: LoRA needs a base: set train.model.init_from (a Hugging Face model or a checkpoint)")
        if self.optim.optimizer == "muon" and self.peft is not None:
            problems.append('optim.optimizer: "muon" is for whole matrices; LoRA runs ([train.peft]) use "adamw"')
        if self.peft is not None and self.runtime.parallel == "fsdp":
            problems.append('runtime.parallel: "fsdp" is not supported for LoRA finetuning ([train.peft]); use "ddp"')
        if self.optim.optimizer == "muon" and self.runtime.parallel == "fsdp":
            problems.append('optim.optimizer: "muon" needs whole matrices; use runtime.parallel = "ddp"')
        if self.eval is not None and self.runtime.parallel == "fsdp":
            problems.append(
                'eval: rank 0 evaluates the whole model alone, which "fsdp" shards; use runtime.parallel = "ddp"'
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class SampleRuntimeConfig:
    """[sample.runtime]: where to find the checkpoint and how to run it."""

    # Samples are saved under out_dir/samples.
    out_dir: FolderPath
    # The model (nanoGPT's sample.py name): "resume" samples the checkpoint found in out_dir; else a
    # source as [train.model] init_from takes it (a Hugging Face model id, a local Hugging Face
    # directory or a checkpoint file), sampled as it is, with its own tokenizer.
    init_from: str = Field(default="resume", min_length=1)
    device: Device = "cpu"
    dtype: DType = "float32"
    seed: int = 1337
    compile: bool = False


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class SampleSettings:
    """[sample.sample]: what to generate. `start` may be "FILE:path" to read the prompt."""

    start: str = "\n"
    num_samples: PositiveInt = 1
    max_new_tokens: PositiveInt = 500
    # 0 means greedy decoding.
    temperature: float = Field(default=0.8, ge=0)
    top_k: PositiveInt | None = 200
    top_p: float | None = Field(default=None, gt=0, le=1)
    # Tokens kept when the text outgrows the model's block_size (at most block_size). None keeps
    # block_size: nanoGPT's sliding window, one full forward per token past block_size. Smaller
    # values rebuild the KV cache only every block_size - context_keep + 1 tokens (faster).
    context_keep: PositiveInt | None = None


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class SampleConfig:
    """[sample]"""

    runtime: SampleRuntimeConfig
    sample: SampleSettings = SampleSettings()


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class OllamaExportConfig:
    """[export.ollama]: GGUF + Modelfile export."""

    enabled: bool = False
    export_dir: FolderPath
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    quant: str = "f16"
    template: str | None = None
    # Path to llama.cpp's convert-hf-to-gguf.py; None writes GGUF in-process with `gguf`.
    convert_bin: ProjectPath | None = None


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class ExportConfig:
    """[export]"""

    ollama: OllamaExportConfig


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class EvalConfig(EvalSettings):
    """[eval]: `make eval` evaluates the checkpoint found in out_dir (as the sampler finds it) and
    writes out_dir/eval/<step>.json."""

    out_dir: FolderPath
    device: Device = "cpu"
    dtype: DType = "float32"


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class ExperimentConfig:
    """One experiment TOML file. Each command requires the tables it uses."""

    prepare: PrepareConfig | None = None
    train: TrainConfig | None = None
    sample: SampleConfig | None = None
    export: ExportConfig | None = None
    eval: EvalConfig | None = None
