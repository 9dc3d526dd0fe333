"""Every TOML the project ships validates against the schema, and every experiment has one."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from pathlib import Path

import pytest

from ml_playground import registry
from ml_playground.config import PROJECT_ROOT
from ml_playground.config_loader import load_experiment_config
from ml_playground.train.checkpoint import MERGED_DIR

_PACKAGE = PROJECT_ROOT / "ml_playground"
KNOWN_EXPERIMENTS = {"bundestag_char", "bundestag_tiktoken", "shakespeare", "shakespeare_char", "shakespeare_lora"}
SHIPPED: list[Path] = sorted(
    [*(_PACKAGE / "configs").glob("*.toml"), *(_PACKAGE / "experiments").glob("*/config.toml")]
)


EXAMPLES: list[Path] = sorted((_PACKAGE / "configs").glob("*.toml"))
GPU_CONFIGS = [
    "gpt2_124m_gpu.toml",
    "shakespeare_char_gpu.toml",
    "shakespeare_char_fast_gpu.toml",
    "shakespeare_gpu.toml",
    "shakespeare_lora_gpu.toml",
]


def test_configs_are_shipped() -> None:
    names = {path.name for path in SHIPPED}
    assert {"shakespeare_cpu.toml", "config.toml", *GPU_CONFIGS} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(Path(p).relative_to(PROJECT_ROOT)))
def test_shipped_config_loads(path: Path) -> None:
    cfg = load_experiment_config(path)
    assert cfg.prepare is not None
    assert cfg.train is not None
    assert cfg.sample is not None
    # train reads what prepare writes; sample reads what train writes (a LoRA run: its merged model)
    assert cfg.train.data.dataset_dir == cfg.prepare.dataset_dir
    written = cfg.train.runtime.out_dir
    if cfg.train.peft is not None:
        assert cfg.train.peft.merge_on_save
        written = written / MERGED_DIR
    assert cfg.sample.runtime.out_dir == written


def test_every_experiment_has_a_valid_default_config() -> None:
    """The registry holds every experiment folder (one with a preparer.py), the known ones among
    them, and each one's default config loads with the tables its commands need."""
    experiments = _PACKAGE / "experiments"
    folders = {path.parent.name for path in experiments.glob("*/preparer.py")}
    assert folders >= KNOWN_EXPERIMENTS
    # Unit tests may register throwaway experiments in temporary folders; only shipped ones count.
    shipped = {name for name in registry.names() if registry.get(name).folder.is_relative_to(experiments)}
    assert shipped == folders
    for name in shipped:
        experiment = registry.get(name)
        assert experiment.folder == experiments / name
        cfg = load_experiment_config(experiment.default_config)
        assert cfg.prepare is not None
        assert cfg.train is not None
        assert cfg.sample is not None


def _header(path: Path) -> str:
    """The comment lines that open the file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in itertools.takewhile(lambda line: line.startswith("#"), lines))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).name)
def test_example_config_header_names_its_command(path: Path) -> None:
    """Each example opens with what it is and a make command on itself; GPU ones say they need CUDA."""
    header = _header(path)
    assert re.search(rf"make (loop|train|export) EXP=\w+ CONFIG=ml_playground/configs/{re.escape(path.name)}", header)
    cfg = load_experiment_config(path)
    assert cfg.train is not None
    assert ("Needs CUDA" in header) == (cfg.train.runtime.device == "cuda")


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_config_trains_and_samples_on_cuda_in_bfloat16(name: str) -> None:
    cfg = load_experiment_config(_PACKAGE / "configs" / name)
    assert cfg.train is not None
    assert cfg.sample is not None
    assert (cfg.train.runtime.device, cfg.train.runtime.dtype) == ("cuda", "bfloat16")
    assert (cfg.sample.runtime.device, cfg.sample.runtime.dtype) == ("cuda", "bfloat16")
    assert cfg.train.runtime.compile  # every mode trains our GPT, LoRA included


def test_char_gpu_config_is_nanogpts_train_shakespeare_char() -> None:
    """The values of nanoGPT's config/train_shakespeare_char.py (and its train.py defaults)."""
    cfg = load_experiment_config(_PACKAGE / "configs" / "shakespeare_char_gpu.toml")
    assert cfg.train is not None
    assert cfg.prepare is not None
    train = cfg.train
    assert cfg.prepare.tokenizer == "char"
    assert (train.model.n_layer, train.model.n_head, train.model.n_embd) == (6, 6, 384)
    assert (train.model.block_size, train.model.dropout, train.model.bias) == (256, 0.2, False)
    assert (train.data.batch_size, train.data.block_size, train.data.grad_accum_steps) == (64, 256, 1)
    assert train.data.global_batch_size is None
    assert train.data.sampler == "random"
    optim = train.optim
    assert (optim.learning_rate, optim.weight_decay, optim.beta1, optim.beta2, optim.grad_clip) == (
        1e-3,
        0.1,
        0.9,
        0.99,
        1.0,
    )
    schedule = train.schedule
    assert (schedule.decay_lr, schedule.warmup_iters, schedule.lr_decay_iters, schedule.min_lr) == (
        True,
        100,
        5000,
        1e-4,
    )
    runtime = train.runtime
    assert (runtime.max_iters, runtime.eval_interval, runtime.eval_iters, runtime.log_interval) == (5000, 250, 200, 10)
    assert runtime.always_save_checkpoint is False
    assert (runtime.device, runtime.dtype, runtime.compile) == ("cuda", "bfloat16", True)


def test_fast_char_gpu_config_changes_only_blocks_optimizer_and_length() -> None:
    """The time-to-quality config is train_shakespeare_char's run (same shape, data, batch, dropout,
    evaluation) with the newer blocks, Muon and a shorter schedule, so the two compare fairly."""
    nanogpt = load_experiment_config(_PACKAGE / "configs" / "shakespeare_char_gpu.toml").train
    fast = load_experiment_config(_PACKAGE / "configs" / "shakespeare_char_fast_gpu.toml").train
    assert nanogpt is not None
    assert fast is not None
    assert fast.model == nanogpt.model.replace(position="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True)
    assert fast.data == nanogpt.data
    assert fast.optim == replace(nanogpt.optim, optimizer="muon")
    assert fast.schedule == replace(nanogpt.schedule, lr_decay_iters=2000)
    assert fast.runtime == replace(nanogpt.runtime, max_iters=2000, out_dir=fast.runtime.out_dir)


def test_gpt2_124m_config_is_nanogpts_train_gpt2() -> None:
    """nanoGPT's config/train_gpt2.py: GPT-2 124M, ~0.5M tokens per step (12 x 1024 x 5 x 8 GPUs)."""
    cfg = load_experiment_config(_PACKAGE / "configs" / "gpt2_124m_gpu.toml")
    assert cfg.train is not None
    assert cfg.prepare is not None
    train = cfg.train
    assert (cfg.prepare.tokenizer, cfg.prepare.encoding) == ("tiktoken", "gpt2")
    assert (train.model.n_layer, train.model.n_head, train.model.n_embd, train.model.block_size) == (12, 12, 768, 1024)
    assert (train.model.dropout, train.model.bias) == (0.0, False)
    assert (train.data.batch_size, train.data.block_size) == (12, 1024)
    # The global batch holds for any number of ranks: 40 micro-steps on one GPU, 5 on each of 8.
    assert train.data.global_batch_size == 12 * 40
    assert train.data.global_batch_size * train.data.block_size == 491_520
    optim = train.optim
    assert (optim.learning_rate, optim.weight_decay, optim.beta1, optim.beta2, optim.grad_clip) == (
        6e-4,
        0.1,
        0.9,
        0.95,
        1.0,
    )
    schedule = train.schedule
    assert (schedule.warmup_iters, schedule.lr_decay_iters, schedule.min_lr) == (2000, 600_000, 6e-5)
    runtime = train.runtime
    assert (runtime.max_iters, runtime.eval_interval, runtime.eval_iters) == (600_000, 1000, 200)
    assert (runtime.device, runtime.dtype, runtime.compile) == ("cuda", "bfloat16", True)


def test_lora_gpu_config_finetunes_the_gpu_base_within_its_context() -> None:
    """The LoRA GPU run reads the HF export that shakespeare_gpu.toml writes, at most its context."""
    lora = load_experiment_config(_PACKAGE / "configs" / "shakespeare_lora_gpu.toml")
    base = load_experiment_config(_PACKAGE / "configs" / "shakespeare_gpu.toml")
    assert lora.train is not None
    assert lora.train.peft is not None
    assert base.train is not None
    assert base.export is not None
    assert PROJECT_ROOT / lora.train.model.init_from == base.export.ollama.export_dir / "hf"
    assert lora.train.data.block_size <= base.train.model.block_size
    assert lora.prepare is not None
    assert base.prepare is not None
    assert lora.prepare.encoding == base.prepare.encoding
