"""Exact resume of a LoRA finetune: a process killed with SIGKILL after a checkpoint and started
again reproduces the uninterrupted run bit for bit (per-step losses, adapter, merged model), with
adapter dropout, random windows and gradient accumulation on CPU, on a GPT-2 and a Llama-style
base. A checkpoint that does not fit the configured adapter is refused with one line naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.errors import CheckpointError
from ml_playground.train.checkpoint import load_checkpoint
from tests.integration.tiny_gpt import CORPUS, char_model, llama
from tests.support.kill_switch import spec, train_cli
from tests.support.tiny_lora import (
    LLAMA_TARGETS,
    finetune,
    lora_train_table,
    torch_threads,
    write_base,
    write_finetune_dataset,
)
from tests.support.tiny_training import read_scalars, train_config
from tests.support.torchrun import write_toml

pytestmark = pytest.mark.slow

MAX_ITERS = 30  # checkpoints at 10, 20 and 30; the kill comes at 23
KILL_AFTER_ITER = 20


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the base is a local directory; never reach the hub


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base and the dataset."""
    root = tmp_path_factory.mktemp("lora_resume")
    with torch_threads(1):
        model, tokenizer, meta = char_model(steps=20)
    write_base(model, meta, root / "base")
    write_finetune_dataset(root / "ds", tokenizer, meta, "\n".join(reversed(CORPUS.splitlines())) * 4)
    return root


@pytest.fixture(scope="module")
def llama_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-style base (LlamaForCausalLM with GQA) and the dataset; LoRA on all its projections."""
    root = tmp_path_factory.mktemp("lora_resume_llama")
    with torch_threads(1):
        model, tokenizer, meta = char_model(steps=20, **llama(n_kv_head=2))
    write_base(model, meta, root / "base")
    write_finetune_dataset(root / "ds", tokenizer, meta, "\n".join(reversed(CORPUS.splitlines())) * 4)
    (root / "targets.json").write_text(json.dumps(list(LLAMA_TARGETS)))
    return root


def _table(root: Path, out_dir: Path) -> dict[str, Any]:
    table = lora_train_table(root / "ds", root / "base", out_dir, max_iters=MAX_ITERS)
    table["data"] = {**table["data"], "grad_accum_steps": 2}
    table["peft"] = {**table["peft"], "lora_dropout": 0.1}
    targets = root / "targets.json"  # the base's modules when they are not GPT-2's (the default)
    if targets.is_file():
        table["peft"]["target_modules"] = json.loads(targets.read_text())
    return table


def _kill_mid_run(root: Path, table: dict[str, Any], out_dir: Path) -> int:
    """Finetune through the CLI, SIGKILLed by the kill switch 3 steps past the first checkpoint at
    or after KILL_AFTER_ITER; return that checkpoint's iter."""
    config = write_toml(root / f"{out_dir.name}.toml", {"train": table})
    train_cli(config, killed=True, env=spec(rank=0, after_iter=KILL_AFTER_ITER, steps=3, marker=root / "killed"))
    return load_checkpoint(out_dir / "ckpt_last.pt").iter_num


def _train_losses(out_dir: Path) -> list[tuple[int, float]]:
    return read_scalars(out_dir / "logs" / "tb")["train/loss"]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("base", ["root", "llama_root"])
def test_sigkill_and_resume_is_bit_identical(request: pytest.FixtureRequest, base: str) -> None:
    root: Path = request.getfixturevalue(base)
    reference_dir, resumed_dir = root / "reference", root / "resumed"
    with torch_threads(1):
        finetune(train_config(_table(root, reference_dir)))

    killed_at = _kill_mid_run(root, _table(root, resumed_dir), resumed_dir)
    assert KILL_AFTER_ITER <= killed_at < MAX_ITERS
    assert not (resumed_dir / "merged").exists()  # written only when a run ends
    output = train_cli(root / f"{resumed_dir.name}.toml")
    assert f"resuming from {resumed_dir / 'ckpt_last.pt'} at iter {killed_at}" in output

    reference_losses = _train_losses(reference_dir)
    assert [step for step, _ in reference_losses] == list(range(MAX_ITERS))
    assert _train_losses(resumed_dir) == reference_losses  # exact float equality, every step
    reference, resumed = load_checkpoint(reference_dir / "ckpt_last.pt"), load_checkpoint(resumed_dir / "ckpt_last.pt")
    assert resumed.iter_num == reference.iter_num == MAX_ITERS
    assert resumed.is_adapter
    assert _equal(resumed.model, reference.model)
    assert resumed.best_val_loss == reference.best_val_loss
    for folder in ("adapter", "adapter_last"):  # the PEFT copies, byte for byte
        name = "adapter_model.safetensors"
        assert (resumed_dir / folder / name).read_bytes() == (reference_dir / folder / name).read_bytes()
    merged = load_checkpoint(resumed_dir / "merged" / "ckpt_best.pt")
    assert _equal(merged.model, load_checkpoint(reference_dir / "merged" / "ckpt_best.pt").model)


@pytest.fixture(scope="module")
def short_run(root: Path) -> Path:
    """A finished 2-step finetune (checkpoints, merged model): `_table`'s settings, LoRA on c_attn and c_proj."""
    table = _table(root, root / "short")
    table["peft"] = {**table["peft"], "target_modules": ["c_attn", "c_proj"]}
    table["runtime"] = {**table["runtime"], "max_iters": 2, "eval_interval": 2}
    with torch_threads(1):
        finetune(train_config(table))
    return root / "short"


def _resume_in(root: Path, out: Path, checkpoint: Path, **peft: Any) -> CheckpointError:
    """Resume `checkpoint` (as out/ckpt_last.pt) with short_run's settings and `peft` changed; the error."""
    out.mkdir()
    shutil.copy(checkpoint, out / "ckpt_last.pt")
    table = _table(root, out)
    table["peft"] = {**table["peft"], "target_modules": ["c_attn", "c_proj"], **peft}
    with pytest.raises(CheckpointError) as error, torch_threads(1):
        finetune(train_config(table))
    return error.value


@pytest.mark.parametrize(
    ("peft", "problem"),
    [
        pytest.param(
            {"r": 8},
            "shape(s) differ, e.g. transformer.h.0.attn.c_attn.lora_A.default.weight (4, 32) vs (8, 32)",
            id="other-rank",
        ),
        pytest.param(
            {"target_modules": ["c_attn"]},
            "unexpected tensor(s), e.g. transformer.h.0.attn.c_proj.lora_A.default.weight",
            id="fewer-modules",
        ),
        pytest.param(
            {"target_modules": ["c_attn", "c_proj", "c_fc"]},
            "tensor(s) missing, e.g. transformer.h.0.mlp.c_fc.lora_A.default.weight",
            id="more-modules",
        ),
    ],
)
def test_resume_with_other_adapter_settings_is_one_line(
    root: Path, short_run: Path, tmp_path: Path, peft: dict[str, Any], problem: str
) -> None:
    message = str(_resume_in(root, tmp_path / "run", short_run / "ckpt_last.pt", **peft))
    assert message.startswith(f"{tmp_path / 'run' / 'ckpt_last.pt'}: adapter does not fit train.peft (")
    assert problem in message
    assert "\n" not in message


def test_resume_from_a_whole_model_is_one_line(root: Path, short_run: Path, tmp_path: Path) -> None:
    error = _resume_in(root, tmp_path / "run", short_run / "merged" / "ckpt_best.pt")  # a GPT checkpoint
    assert str(error) == (
        f"{tmp_path / 'run' / 'ckpt_last.pt'}: holds a whole model, not a LoRA adapter; give the LoRA run its own "
        "train.runtime.out_dir"
    )
