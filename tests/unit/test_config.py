"""The schema's own rules (config.py), built directly; config_loader's tests build it from TOML."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ml_playground.config import (
    PROJECT_ROOT,
    DataConfig,
    ExperimentConfig,
    ExportConfig,
    GPTConfig,
    MLPKind,
    ModelConfig,
    OllamaExportConfig,
    OptimConfig,
    PeftConfig,
    PrepareConfig,
    SampleConfig,
    SampleRuntimeConfig,
    SampleSettings,
    ScheduleConfig,
    TrainConfig,
    TrainRuntimeConfig,
    lora_modules,
    project_path,
)


def prepare(**keys: Any) -> PrepareConfig:
    required: dict[str, Any] = {"dataset_dir": "out/ds"}
    return PrepareConfig(**(required | keys))


def data(**keys: Any) -> DataConfig:
    required: dict[str, Any] = {"dataset_dir": "out/ds"}
    return DataConfig(**(required | keys))


def train_runtime(**keys: Any) -> TrainRuntimeConfig:
    required: dict[str, Any] = {"out_dir": "out/run"}
    return TrainRuntimeConfig(**(required | keys))


def sample_runtime(**keys: Any) -> SampleRuntimeConfig:
    required: dict[str, Any] = {"out_dir": "out/run"}
    return SampleRuntimeConfig(**(required | keys))


def ollama(**keys: Any) -> OllamaExportConfig:
    required: dict[str, Any] = {"export_dir": "out/export", "model_name": "m"}
    return OllamaExportConfig(**(required | keys))


def train(**tables: Any) -> TrainConfig:
    required: dict[str, Any] = {"data": data(block_size=16), "runtime": train_runtime()}
    return TrainConfig(**(required | tables))


# Each TOML table's dataclass, built with its required keys only.
TABLES: dict[str, Callable[[], Any]] = {
    "prepare": prepare,
    "train.data": data,
    "train.optim": OptimConfig,
    "train.schedule": ScheduleConfig,
    "train.runtime": train_runtime,
    "train.peft": PeftConfig,
    "train": train,
    "sample.runtime": sample_runtime,
    "sample.sample": SampleSettings,
    "sample": lambda: SampleConfig(runtime=sample_runtime()),
    "export.ollama": ollama,
    "export": lambda: ExportConfig(ollama=ollama()),
    "experiment": ExperimentConfig,
}

# What a config that leaves a key out gets. A changed default changes every run whose config omits
# the key, so a change must be deliberate (and made here too).
DEFAULTS: dict[str, tuple[Callable[[], object], dict[str, Any]]] = {
    "prepare": (
        prepare,
        {"source": "bundled", "fallback_source": None, "source_sha256": None, "download_timeout_s": 60.0}
        | {"tokenizer": "char", "encoding": "gpt2", "val_fraction": 0.1, "text_field": "text"}
        | {"workers": os.cpu_count(), "shard_tokens": 100_000_000},
    ),
    "train.model": (
        ModelConfig,
        {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": 50304, "dropout": 0.0}
        | {"bias": False, "position": "learned", "rope_theta": 10000.0, "norm": "layernorm", "norm_eps": 1e-5}
        | {"mlp": "gelu", "mlp_multiple": 64, "mlp_hidden": 1536, "qk_norm": False, "n_kv_head": 6}
        | {"tie_embeddings": True, "logit_softcap": 0.0, "real_vocab_size": 50304}
        | {"init_from": "scratch", "vocab_multiple": 64},
    ),
    "train.data": (
        data,
        {"train_bin": "train.bin", "val_bin": "val.bin", "meta_pkl": "meta.json", "batch_size": 12}
        | {"block_size": 64, "grad_accum_steps": 1, "global_batch_size": None, "sampler": "random"},
    ),
    "train.optim": (
        OptimConfig,
        {"optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99}
        | {"grad_clip": 1.0, "muon_learning_rate": 0.02, "muon_weight_decay": 0.0, "muon_momentum": 0.95}
        | {"muon_nesterov": True, "muon_ns_steps": 5, "muon_adjust_lr": "original"},
    ),
    "train.schedule": (
        ScheduleConfig,
        {"decay_lr": True, "warmup_iters": 100, "lr_decay_iters": 5000, "min_lr": 1e-4},
    ),
    "train.runtime": (
        train_runtime,
        {"max_iters": 5000, "eval_interval": 250, "eval_iters": 200, "log_interval": 10, "eval_only": False}
        | {"always_save_checkpoint": False, "seed": 1337, "device": "cpu", "dtype": "float32", "compile": False}
        | {"parallel": "ddp", "dist_timeout_s": 300.0, "peak_flops": None},
    ),
    "train.peft": (
        PeftConfig,
        {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none", "merge_on_save": True}
        | {"target_modules": ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")},
    ),
    "sample.runtime": (
        sample_runtime,
        {"init_from": "resume", "device": "cpu", "dtype": "float32", "seed": 1337, "compile": False},
    ),
    "sample.sample": (
        SampleSettings,
        {"start": "\n", "num_samples": 1, "max_new_tokens": 500, "temperature": 0.8, "top_k": 200}
        | {"top_p": None, "context_keep": None},
    ),
    "export.ollama": (ollama, {"enabled": False, "quant": "f16", "template": None, "convert_bin": None}),
}


@pytest.mark.parametrize("table", DEFAULTS)
def test_defaults(table: str) -> None:
    build, expected = DEFAULTS[table]
    config = build()
    assert {key: getattr(config, key) for key in expected} == expected
    for key, value in expected.items():
        assert type(getattr(config, key)) is type(value), key  # 60.0 stays a float, 1 an int


def test_the_softcap_the_ablation_switches_on_is_fifteen() -> None:
    assert GPTConfig.model_fields["logit_softcap"].examples == [15.0]


@pytest.mark.parametrize("table", [name for name in TABLES if name != "experiment"])
def test_tables_are_frozen_keyword_only_and_slotted(table: str) -> None:
    config = TABLES[table]()
    key = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, key, getattr(config, key))
    assert not hasattr(config, "__dict__")  # slots: no attribute outside the schema can be set
    with pytest.raises(ValidationError, match="Unexpected positional argument"):
        type(config)(*(getattr(config, f.name) for f in dataclasses.fields(config)))


def test_the_experiment_is_frozen_keyword_only_and_slotted() -> None:
    config = ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train = None  # type: ignore[misc]  # the point: assignment is refused
    assert not hasattr(config, "__dict__")
    with pytest.raises(ValidationError, match="Unexpected positional argument"):
        ExperimentConfig(None)  # type: ignore[call-arg]  # the point: positional arguments are refused


def test_strict_types_and_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="batch_size"):
        data(batch_size="12")
    with pytest.raises(ValidationError, match="batch_sise"):
        data(batch_sise=12)
    assert data(dataset_dir=Path("out/ds")).dataset_dir == data(dataset_dir="out/ds").dataset_dir


def test_paths_are_taken_from_the_project_root() -> None:
    config = data(val_bin="v.bin", meta_pkl="meta.pkl")
    assert config.train_path == PROJECT_ROOT / "out" / "ds" / "train.bin"
    assert config.val_path == PROJECT_ROOT / "out" / "ds" / "v.bin"
    assert config.meta_path == PROJECT_ROOT / "out" / "ds" / "meta.pkl"
    assert project_path("/abs/x") == Path("/abs/x")


# (table, key, accepted values, refused values): each range's bound and a value on either side.
RANGES: list[tuple[Callable[..., object], str, list[object], list[object]]] = [
    (prepare, "download_timeout_s", [0.5], [0.0]),
    (prepare, "val_fraction", [0.5], [0.0, 1.0]),
    (prepare, "text_field", ["t"], [""]),
    (data, "batch_size", [1], [0]),  # every PositiveInt
    (ScheduleConfig, "warmup_iters", [0], [-1]),  # every NonNegativeInt
    (GPTConfig, "dropout", [0.0, 0.5], [-0.5, 1.0]),
    (GPTConfig, "rope_theta", [0.5], [0.0]),
    (GPTConfig, "norm_eps", [0.5], [0.0]),
    (GPTConfig, "logit_softcap", [0.0, 0.5], [-0.5]),
    (ModelConfig, "init_from", ["x"], [""]),
    (OptimConfig, "learning_rate", [0.5], [0.0]),
    (OptimConfig, "weight_decay", [0.0, 0.5], [-0.5]),
    (OptimConfig, "beta1", [0.0, 0.5], [-0.5, 1.0]),
    (OptimConfig, "beta2", [0.0, 0.5], [-0.5, 1.0]),
    (OptimConfig, "grad_clip", [0.0, 0.5], [-0.5]),
    (OptimConfig, "muon_learning_rate", [0.5], [0.0]),
    (OptimConfig, "muon_weight_decay", [0.0, 0.5], [-0.5]),
    (OptimConfig, "muon_momentum", [0.0, 0.5], [-0.5, 1.0]),
    (ScheduleConfig, "min_lr", [0.0, 0.5], [-0.5]),
    (train_runtime, "dist_timeout_s", [0.5], [0.0]),
    (train_runtime, "peak_flops", [0.5], [0.0]),
    (PeftConfig, "lora_dropout", [0.0, 0.5], [-0.5, 1.0]),
    (PeftConfig, "target_modules", [("lm_head",)], [()]),
    (sample_runtime, "init_from", ["x"], [""]),
    (SampleSettings, "temperature", [0.0, 0.5], [-0.5]),
    (SampleSettings, "top_p", [0.5, 1.0], [0.0, 1.5]),
]


@pytest.mark.parametrize(("build", "key", "accepted", "refused"), RANGES, ids=[row[1] for row in RANGES])
def test_ranges(build: Callable[..., object], key: str, accepted: list[object], refused: list[object]) -> None:
    for value in accepted:
        assert getattr(build(**{key: value}), key) == value
    for value in refused:
        with pytest.raises(ValidationError, match=key):
            build(**{key: value})


def shape_problem(**keys: Any) -> str:
    """The message GPTConfig refuses `keys` with ("" if it accepts them)."""
    try:
        GPTConfig(**keys)
    except ValidationError as exc:
        return str(exc)
    return ""


def test_heads_must_divide_the_width_and_key_value_heads_the_heads() -> None:
    assert "n_embd (10) must be divisible by n_head (4)" in shape_problem(n_embd=10, n_head=4)
    assert "n_head (4) must be divisible by n_kv_head (3)" in shape_problem(n_embd=16, n_head=4, n_kv_head=3)
    assert shape_problem(n_embd=16, n_head=4, n_kv_head=2) == ""
    assert shape_problem(n_embd=16, n_head=4, n_kv_head=1) == ""


def test_rope_needs_an_even_head_size() -> None:
    assert "needs an even head size, but n_embd / n_head = 3" in shape_problem(n_embd=12, n_head=4, position="rope")
    for n_embd in (8, 16, 24):  # head sizes 2, 4, 6
        assert shape_problem(n_embd=n_embd, n_head=4, position="rope") == ""
    assert shape_problem(n_embd=12, n_head=4, position="learned") == ""


def test_real_vocab_size_may_not_exceed_vocab_size() -> None:
    assert "real_vocab_size (65) exceeds vocab_size (64)" in shape_problem(vocab_size=64, real_vocab_size=65)
    assert GPTConfig(vocab_size=64, real_vocab_size=63).real_vocab_size == 63
    assert GPTConfig(vocab_size=64, real_vocab_size=64).real_vocab_size == 64


def test_head_dim_defaults_to_an_integer_split_of_the_width() -> None:
    head_dim = GPTConfig(n_embd=12, n_head=4).head_dim
    assert head_dim == 3
    assert type(head_dim) is int  # a tensor dimension


@pytest.mark.parametrize(("mlp", "hidden"), [("gelu", 256), ("relu2", 256), ("swiglu", 192)])
def test_mlp_width_follows_the_kind(mlp: MLPKind, hidden: int) -> None:
    assert GPTConfig(n_embd=64, n_head=4, mlp=mlp, mlp_multiple=64).mlp_hidden == hidden


def test_replace_and_architecture_keep_following_sizes_and_apply_changes() -> None:
    base = GPTConfig(n_embd=16, n_head=4)
    changed = base.replace(n_head=2)
    assert (changed.n_head, changed.n_kv_head, changed.n_embd) == (2, 2, 16)
    model = ModelConfig(n_embd=16, n_head=4, vocab_multiple=8)
    architecture = model.architecture(vocab_size=40)
    assert type(architecture) is GPTConfig
    assert (architecture.n_head, architecture.vocab_size, architecture.real_vocab_size) == (4, 40, 40)


def test_a_pretrained_source_leaves_shape_rules_to_it() -> None:
    for source in ("gpt2", "tiny-gpt2", "/ckpt.pt"):  # before and after "scratch" in sort order
        assert ModelConfig(init_from=source, n_embd=10, n_head=4).n_embd == 10
    with pytest.raises(ValidationError, match="n_embd"):
        ModelConfig(n_embd=10, n_head=4)
    with pytest.raises(ValidationError, match=r"not a \[train.model\] key"):
        ModelConfig(real_vocab_size=10)


def test_fallback_source_only_for_a_file_source() -> None:
    assert prepare(source="corpus.txt", fallback_source="shared/corpus.txt").fallback_source == "shared/corpus.txt"
    assert prepare(source="/data/a.txt", fallback_source="/data/b.txt").fallback_source == "/data/b.txt"
    with pytest.raises(ValidationError, match="only read for a file source, not 'bundled'"):
        prepare(fallback_source="b.txt")
    with pytest.raises(ValidationError, match=re.escape("must be a file path, not 'https://x/b.txt'")):
        prepare(source="a.txt", fallback_source="https://x/b.txt")


def test_global_batch_size_excludes_grad_accum_steps_and_divides_by_batch_size() -> None:
    assert data(batch_size=4, global_batch_size=8).global_batch_size == 8
    assert data(batch_size=4, global_batch_size=4).global_batch_size == 4
    with pytest.raises(ValidationError, match="set global_batch_size or grad_accum_steps, not both"):
        data(batch_size=4, global_batch_size=8, grad_accum_steps=2)
    with pytest.raises(ValidationError, match="global_batch_size \\(6\\) is not divisible by batch_size \\(4\\)"):
        data(batch_size=4, global_batch_size=6)
    with pytest.raises(ValidationError, match="global_batch_size \\(2\\) is not divisible by batch_size \\(4\\)"):
        data(batch_size=4, global_batch_size=2)
    assert data(grad_accum_steps=2).grad_accum_steps == 2


def train_problem(**tables: Any) -> str:
    """The message TrainConfig refuses `tables` with ("" if it accepts them)."""
    try:
        train(**tables)
    except ValidationError as exc:
        return str(exc)
    return ""


PRETRAINED = ModelConfig(init_from="tiny-gpt2")
LORA = PeftConfig()


def test_train_cross_table_rules() -> None:
    assert "data.block_size (16) exceeds model.block_size (8)" in train_problem(model=ModelConfig(block_size=8))
    assert train_problem(model=ModelConfig(block_size=16)) == ""
    assert train_problem(model=ModelConfig(block_size=32)) == ""
    assert train_problem(model=ModelConfig(block_size=8, init_from="tiny-gpt2")) == ""
    optim = OptimConfig(learning_rate=0.01)
    assert "schedule.min_lr (0.02) exceeds optim.learning_rate (0.01)" in train_problem(
        optim=optim, schedule=ScheduleConfig(min_lr=0.02)
    )
    assert train_problem(optim=optim, schedule=ScheduleConfig(min_lr=0.01)) == ""


def test_lora_needs_a_base_adamw_and_ddp() -> None:
    for base in (PRETRAINED, ModelConfig(init_from="gpt2")):
        assert train_problem(model=base, peft=LORA) == ""
    assert "LoRA needs a base" in train_problem(peft=LORA)
    muon = OptimConfig(optimizer="muon")
    assert '"muon" is for whole matrices' in train_problem(model=PRETRAINED, peft=LORA, optim=muon)
    fsdp = train_runtime(parallel="fsdp")
    assert '"fsdp" is not supported for LoRA' in train_problem(model=PRETRAINED, peft=LORA, runtime=fsdp)
    assert '"muon" needs whole matrices' in train_problem(optim=muon, runtime=fsdp)
    assert train_problem(runtime=fsdp) == ""
    assert train_problem(optim=muon) == ""


def test_hugging_face_lora_names_map_onto_our_fused_modules() -> None:
    names = ("down_proj", "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "o_proj")
    assert lora_modules(names) == ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")
    assert lora_modules(("c_proj", "lm_head")) == ("attn.c_proj", "mlp.c_proj", "lm_head")


def test_part_of_a_fused_module_and_unknown_names_are_refused_together() -> None:
    with pytest.raises(ValueError, match="q_proj without k_proj \\+ v_proj") as info:
        lora_modules(("q_proj", "wte"))
    assert "unknown module 'wte'" in str(info.value)
