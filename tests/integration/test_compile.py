"""`compile = true` (torch.compile, inductor on CPU) trains and samples like eager mode, and the
trainer compiles each mode's graph once, without graph breaks.

Tiny 1-layer models and a few steps: most of the time is the compilation itself.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from torch._dynamo.eval_frame import (
    _debug_get_cache_entry_list,  # pyright: ignore[reportPrivateUsage] - no public API lists compiled graphs
)
from torch._dynamo.utils import counters

from ml_playground.config import GPTConfig, SampleConfig, SampleRuntimeConfig, SampleSettings
from ml_playground.data.meta import DatasetMeta
from ml_playground.model import GPT
from ml_playground.sample import run_sampling
from ml_playground.tokenizers import CharTokenizer
from ml_playground.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ml_playground.train.loop import train
from tests.support.greedy import float32_shortfalls
from tests.support.tiny_training import TEXT, read_scalars, tiny_train_table, train_config, write_char_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which(os.environ.get("CXX", "g++")) is None,
        reason="torch.compile on CPU (inductor) needs a C++ compiler",
    ),
]


def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    """3 steps with and without compile: every train and val loss within 1e-4 relative, and the
    compiled run's checkpoint holds plain weight names that load into a GPT."""
    write_char_dataset(tmp_path / "ds")
    losses: dict[bool, dict[str, list[tuple[int, float]]]] = {}
    for compile in (False, True):
        table = tiny_train_table(tmp_path / "ds", tmp_path / f"compile_{compile}")
        table["runtime"] |= {"compile": compile, "max_iters": 3}
        train(train_config(table))
        scalars = read_scalars(tmp_path / f"compile_{compile}" / "logs" / "tb")
        losses[compile] = {tag: scalars[tag] for tag in ("train/loss", "val/loss")}
    for tag, eager in losses[False].items():
        compiled = losses[True][tag]
        assert [step for step, _ in compiled] == [step for step, _ in eager]
        assert [value for _, value in compiled] == pytest.approx([value for _, value in eager], rel=1e-4), tag
    checkpoint = load_checkpoint(tmp_path / "compile_True" / "ckpt_last.pt")
    assert not [key for key in checkpoint.model if key.startswith("_orig_mod.")]
    GPT(checkpoint.arch).load_state_dict(checkpoint.model)


def _input_sizes_of_compiled_graphs() -> list[str]:
    """The size each compiled graph of `GPT.forward` accepts for `idx`, as its guard states it
    ("[4, 16]"; "None" marks a dimension compiled as a symbolic size)."""
    entries = _debug_get_cache_entry_list(GPT.forward)
    parts = [part for entry in entries for part in entry.guard_manager.code_parts]
    return [part.split("size=")[1].split("]")[0] + "]" for part in parts if part.startswith("check_tensor(L['idx']")]


def test_compiled_trainer_compiles_each_graph_once(tmp_path: Path) -> None:
    """Through the trainer (`run` with `gpt_target`), after another run in the same process at
    another shape: the first training step and the first evaluation (iter 3; eval mode, no_grad)
    compile one static-shape graph each, with no graph break; later steps and the evaluations at
    iters 6 (between steps) and 7 (after the last) reuse them: no recompilation."""
    write_char_dataset(tmp_path / "ds")
    other = tiny_train_table(tmp_path / "ds", tmp_path / "other")
    other["data"] |= {"batch_size": 2, "block_size": 8}
    other["runtime"] |= {"compile": True, "eval_only": True}
    table = tiny_train_table(tmp_path / "ds", tmp_path / "out")
    table["model"] |= {"dropout": 0.1}  # train and eval graphs differ
    table["runtime"] |= {"compile": True, "max_iters": 7, "eval_interval": 3}
    compiled_after_step: list[tuple[int, int]] = []

    def on_step(_iter_num: int, _loss: torch.Tensor) -> None:
        compiled_after_step.append((counters["frames"]["total"], counters["stats"]["unique_graphs"]))

    torch.compiler.reset()  # no compiled graphs or counts from earlier tests in this process
    counters.clear()
    try:
        train(train_config(other))  # one eval graph for (2, 8)
        train(train_config(table), on_step=on_step)
        assert dict(counters["graph_break"]) == {}
        # (frames compiled, graphs) after each of the 7 steps, and after the final evaluation.
        assert compiled_after_step == [(2, 2)] * 3 + [(3, 3)] * 4
        assert (counters["frames"]["total"], counters["stats"]["unique_graphs"]) == (3, 3)
        # Not widened to symbolic sizes by the earlier run's shape ("automatic dynamic shapes").
        assert sorted(_input_sizes_of_compiled_graphs()) == ["[2, 8]", "[4, 16]", "[4, 16]"]
    finally:
        torch.compiler.reset()
        counters.clear()


def test_compiled_sampling_picks_what_eager_picks(tmp_path: Path) -> None:
    """Greedy sampling past block_size (prefill, cached steps, full windows) with compile: the
    same length, each token eager's argmax up to float rounding (within 1e-3 of its maximum)."""
    itos = sorted(set(TEXT))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=len(itos), n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():  # larger embeddings than GPT-2's init: varied greedy choices
        if model.wpe is not None:  # absent with rotary positions
            model.wpe.weight.mul_(10.0)
        model.wte.weight.mul_(3.0)
    model.eval()
    meta = DatasetMeta(kind="char", vocab_size=len(itos), dtype="uint16", itos=itos)
    checkpoint = Checkpoint(
        schema_version=1,
        model=model.state_dict(),
        arch=model.config,
        iter_num=1,
        best_val_loss=1.0,
        config={},
        dataset_meta=meta.to_dict(),
    )
    save_checkpoint(tmp_path / "ckpt_best.pt", checkpoint)
    settings = SampleSettings(start="First", max_new_tokens=20, temperature=0.0)
    (text,) = run_sampling(SampleConfig(runtime=SampleRuntimeConfig(out_dir=tmp_path, compile=True), sample=settings))
    assert len(text) == len("First") + 20
    # float32_shortfalls runs the eager model on each prefix: 0 where eager picks the same token.
    tokens = CharTokenizer(itos).encode(text)
    assert max(float32_shortfalls(model, tokens, prompt_length=len("First"))) < 1e-3
