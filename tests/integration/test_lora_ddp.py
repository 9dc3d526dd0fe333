"""LoRA under real torchrun (2 CPU ranks, gloo) is DDP: one adapter, trained on both ranks' data.

- Both ranks end with bit-identical adapters (their gradients are averaged every step), and
  2 ranks x grad_accum_steps 1 train like 1 process x grad_accum_steps 2 on the same windows
  (sequential sampler): the ranks read disjoint halves of each step's windows.
- Rank 0 alone writes: rank 1 opens nothing under out_dir for writing (audited), rank 0's
  writes account for every file there.
- The merge at the end (rank 0, model still DDP-wrapped) is base + best adapter, as PEFT computes it.
- SIGKILL of rank 1 after a checkpoint, then a rerun through the CLI, reproduces the
  uninterrupted 2-rank run bit for bit (losses, adapter, merged model).
- FSDP is refused with one line before any rank loads the base.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.errors import ConfigError
from ml_playground.model import GPT
from ml_playground.train.checkpoint import load_checkpoint
from tests.integration.tiny_gpt import CORPUS, char_model
from tests.support.kill_switch import spec as kill_spec
from tests.support.lora_ranks import read_report, run_ranks
from tests.support.tiny_lora import (
    adapted_hf,
    finetune,
    lora_train_table,
    torch_threads,
    write_base,
    write_finetune_dataset,
)
from tests.support.tiny_training import read_scalars, train_config
from tests.support.torchrun import run, start, write_toml

pytestmark = pytest.mark.slow

MAX_ITERS = 40  # 5 epochs of 8 steps; checkpoints every 10 steps, the kill at 23
KILL_AFTER_ITER = 20
BLOCK = 16
WINDOWS_PER_STEP = 8  # batch_size 4 x 2 ranks (or x 2 micro-steps)


def _table(root: Path, out_dir: Path, *, grad_accum_steps: int) -> dict[str, Any]:
    table = lora_train_table(root / "ds", root / "base", out_dir, max_iters=MAX_ITERS)
    table["data"] = {**table["data"], "grad_accum_steps": grad_accum_steps, "sampler": "sequential"}
    table["runtime"] = {**table["runtime"], "parallel": "ddp", "dist_timeout_s": 30.0}
    return table


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    return read_scalars(out_dir / "logs" / "tb")["train/loss"]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base, the dataset, and the uninterrupted 2-rank run with each rank's report."""
    root = tmp_path_factory.mktemp("lora_ddp")
    with torch_threads(1):  # the CPU is shared; spinning thread pools slow tiny models down
        model, tokenizer, meta = char_model(steps=20)
    write_base(model, meta, root / "base")
    text = "\n".join(reversed(CORPUS.splitlines())) * 6  # the base's characters, another text
    # A whole number of steps of windows per epoch, tiling the train split exactly: every step of
    # the 2-rank and the 1-process run covers the same 8 windows, across epochs too.
    write_finetune_dataset(root / "ds", tokenizer, meta, text, train_tokens=WINDOWS_PER_STEP * 8 * BLOCK + 1)
    config = write_toml(root / "two.toml", {"train": _table(root, root / "two_ranks", grad_accum_steps=1)})
    (root / "two_ranks.log").write_text(run_ranks(config, root / "reports"))
    return root


def test_both_ranks_end_with_the_same_adapter(runs: Path) -> None:
    rank0, rank1 = read_report(runs / "reports", 0), read_report(runs / "reports", 1)
    lora_b = [value for key, value in rank0.adapter.items() if "lora_B" in key]
    assert len(lora_b) == 8  # 2 layers x (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
    assert all(value.abs().max() > 0 for value in lora_b)  # trained: LoRA's B starts at zero
    assert _equal(rank0.adapter, rank1.adapter)  # gradients averaged every step: bit for bit
    last = load_checkpoint(runs / "two_ranks" / "ckpt_last.pt")
    assert last.iter_num == MAX_ITERS
    assert _equal(last.model, rank0.adapter)  # what rank 0 saved is what both ranks hold


def test_ranks_read_disjoint_halves_like_one_process_with_doubled_accumulation(runs: Path) -> None:
    """Ranks reading the same windows, or not averaging gradients, would train the 2-rank run on
    4 windows per step instead of the 1-process run's 8."""
    one = runs / "one_rank"
    with torch_threads(1):
        finetune(train_config(_table(runs, one, grad_accum_steps=2)))
    one_losses, two_losses = _losses(one), _losses(runs / "two_ranks")
    assert [step for step, _ in two_losses] == [step for step, _ in one_losses] == list(range(MAX_ITERS))
    worst = max(abs(a - b) / abs(a) for (_, a), (_, b) in zip(one_losses, two_losses, strict=True))
    assert worst < 1e-5, f"largest relative loss difference {worst:.3g}"
    assert one_losses[-1][1] < one_losses[0][1] - 0.2  # it really trained
    single, two = load_checkpoint(one / "ckpt_last.pt").model, read_report(runs / "reports", 0).adapter
    drift = max((single[key] - value).abs().max().item() for key, value in two.items())
    assert drift < 1e-5, f"largest adapter difference {drift:.3g}"


def test_only_rank_zero_writes(runs: Path) -> None:
    out = runs / "two_ranks"
    rank0, rank1 = read_report(runs / "reports", 0), read_report(runs / "reports", 1)
    assert rank1.writes == []
    written = {entry.split(" ", 1)[1] for entry in rank0.writes}
    files = sorted(path for path in out.rglob("*") if path.is_file())
    assert len(files) > 10
    assert [path for path in files if str(path) not in written] == []  # the audit saw every file made
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",  # rank 0's out_dir lock
        "adapter",
        "adapter_last",
        "ckpt_best.pt",
        "ckpt_last.pt",
        "logs",
        "merged",
    ]
    assert len(list((out / "logs" / "tb").iterdir())) == 1  # one event file
    log = (runs / "two_ranks.log").read_text()
    assert log.count("saved ckpt_last.pt") == MAX_ITERS // 10 + 1
    assert log.count("training on cpu (float32), 2 rank(s) (ddp), global batch 8") == 1


def test_merged_model_is_base_plus_best_adapter(runs: Path) -> None:
    """The merge at the end of a DDP run (rank 0, model still wrapped) holds the best adapter."""
    out = runs / "two_ranks"
    merged, best = load_checkpoint(out / "merged" / "ckpt_best.pt"), load_checkpoint(out / "ckpt_best.pt")
    assert (merged.iter_num, merged.best_val_loss) == (best.iter_num, best.best_val_loss)
    model = GPT(merged.arch).eval()
    model.load_state_dict(merged.model)
    adapted = adapted_hf(runs / "base", out / "adapter")
    ids = torch.tensor([list(range(merged.arch.vocab_size)) * 2])
    with torch.no_grad():
        assert (model(ids).logits - adapted(input_ids=ids).logits).abs().max().item() <= 1e-4


def test_dead_rank_then_rerun_resumes_exactly(runs: Path) -> None:
    out = runs / "killed"
    config = write_toml(runs / "killed.toml", {"train": _table(runs, out, grad_accum_steps=1)})
    # Rank 1 SIGKILLs itself 3 steps past the first checkpoint at or after KILL_AFTER_ITER.
    kill = kill_spec(rank=1, after_iter=KILL_AFTER_ITER, steps=3, marker=runs / "killed.marker")
    launcher = start(config, nproc=2, module="tests.support.kill_switch", env=kill)
    try:
        output, _ = launcher.communicate(timeout=240)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()
    assert launcher.returncode != 0
    assert (runs / "killed.marker").exists()  # rank 1 reached the kill point
    assert "Signal 9 (SIGKILL)" in output or "exitcode  : -9" in output, output[-3000:]
    resumed_from = load_checkpoint(out / "ckpt_last.pt").iter_num
    assert KILL_AFTER_ITER <= resumed_from < MAX_ITERS
    assert not (out / "merged").exists()

    result: subprocess.CompletedProcess[str] = run(config, nproc=2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from {out / 'ckpt_last.pt'} at iter {resumed_from}" in result.stderr
    reference = runs / "two_ranks"
    assert _losses(out) == _losses(reference)  # exact, every step
    final, expected = load_checkpoint(out / "ckpt_last.pt"), load_checkpoint(reference / "ckpt_last.pt")
    assert final.iter_num == MAX_ITERS
    assert _equal(final.model, expected.model)
    merged, expected_merged = (
        load_checkpoint(out / "merged" / "ckpt_best.pt"),
        load_checkpoint(reference / "merged" / "ckpt_best.pt"),
    )
    assert _equal(merged.model, expected_merged.model)


def test_fsdp_is_refused_before_the_base_loads(tmp_path: Path) -> None:
    """parallel "fsdp" with [train.peft]: one config line, before any rank could read the base."""
    table = lora_train_table(tmp_path / "ds", tmp_path / "no_base", tmp_path / "run", max_iters=2)
    table["runtime"] = {**table["runtime"], "parallel": "fsdp"}
    with pytest.raises(ConfigError) as error:
        train_config(table)
    assert str(error.value) == (
        'test.toml: train: runtime.parallel: "fsdp" is not supported for LoRA finetuning ([train.peft]); use "ddp"'
    )
