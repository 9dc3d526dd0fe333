"""DDP under real torchrun: 2 CPU processes (gloo) on 127.0.0.1, launched through the CLI.

- 2 ranks x grad_accum_steps 1 trains like 1 rank x grad_accum_steps 2 on the same windows
  (sequential sampler): the loss curves agree within 1e-5 relative in float32.
- Only rank 0 writes: an audit of each rank's writes (tests/support/write_audit.py) finds none
  from rank 1, and rank 0's account for every file in out_dir.
- SIGKILL of rank 1 (by tests/support/kill_switch.py, 5 steps past the checkpoint at iter 20)
  ends the job (non-zero, naming the failed rank) instead of hanging; a rerun
  (`make train NPROC=2`) resumes from ckpt_last.pt and reproduces the uninterrupted 2-rank run exactly.
- With `torchrun --max-restarts=1` the same kill restarts both ranks, which resume from
  ckpt_last.pt on their own; the job succeeds with the uninterrupted run's losses.
- Both ranks build the same initial weights, then draw different dropout masks (a dropout
  stream per rank).
- A 2-rank checkpoint resumes in one process (weights, optimizer, step; a warning says the data
  order changes).
- FSDP (`parallel = "fsdp"`, fully_shard over gloo) trains like DDP, and its checkpoint holds
  the full weights (it loads into a plain GPT); resuming its optimizer without FSDP is a clear error.
- An FSDP run SIGKILLed past a checkpoint resumes at the same world size to the uninterrupted
  FSDP run's losses, exactly.
- `optimizer = "muon"` under DDP trains like one rank with doubled accumulation.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.errors import CheckpointError
from ml_playground.model import GPT
from ml_playground.train.checkpoint import load_checkpoint
from ml_playground.train.loop import train
from tests.support.kill_switch import spec as kill_spec
from tests.support.tiny_training import (
    read_scalars,
    text_with_whole_steps,
    tiny_train_table,
    train_config,
    write_char_dataset,
)
from tests.support.torchrun import (
    ROOT,
    environment,
    make_train,
    run,
    start,
    torchrun_command,
    train_command,
    write_toml,
)
from tests.support.write_audit import read_writes
from tests.support.write_audit import spec as audit_spec

KILL_SWITCH = "tests.support.kill_switch"
# 30 steps: 3 epochs of the corpus (9 steps each), checkpoints at 10, 20 and 30, a kill at 25.
MAX_ITERS = 30
EVAL_INTERVAL = 10
KILL_AFTER_ITER = 20
STEPS_PAST_CHECKPOINT = 5
BLOCK = 16
WINDOWS_PER_STEP = 8  # batch_size 4 x 2 ranks (or x 2 micro-steps)
# A job with a dead rank must end, not hang: torchrun notices the exit at once, and collectives
# would time out after train.runtime.dist_timeout_s (30 s here). A generous bound on the whole
# run, not a speed check.
DEATH_TIMEOUT_S = 240


def _table(dataset_dir: Path, out_dir: Path, *, grad_accum_steps: int, parallel: str = "ddp") -> dict[str, Any]:
    table = tiny_train_table(dataset_dir, out_dir)
    table["model"] = {**table["model"], "n_layer": 2, "n_embd": 32, "n_head": 2}
    table["data"] = {
        **table["data"],
        "grad_accum_steps": grad_accum_steps,
        "sampler": "sequential",
        "block_size": BLOCK,
    }
    table["schedule"] = {"warmup_iters": 5, "lr_decay_iters": MAX_ITERS, "min_lr": 1e-3}
    table["runtime"] = {
        **table["runtime"],
        "max_iters": MAX_ITERS,
        "eval_interval": EVAL_INTERVAL,
        "dist_timeout_s": 30.0,
        "parallel": parallel,
    }
    return table


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    return read_scalars(out_dir / "logs" / "tb")["train/loss"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted runs both tests compare against: 1 rank (in this process) and 2 ranks."""
    root = tmp_path_factory.mktemp("ddp")
    write_char_dataset(root / "ds", text_with_whole_steps(BLOCK, WINDOWS_PER_STEP, repeats=1))
    train(train_config(_table(root / "ds", root / "one_rank", grad_accum_steps=2)))
    config = write_toml(root / "two.toml", {"train": _table(root / "ds", root / "two_ranks", grad_accum_steps=1)})
    (root / "audit").mkdir()
    audit = audit_spec(root / "two_ranks", root / "audit")
    command = train_command(config, nproc=2, module="tests.support.write_audit")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment(audit), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    (root / "two_ranks.log").write_text(result.stdout + result.stderr)
    return {"root": root, "one_rank": root / "one_rank", "two_ranks": root / "two_ranks"}


@pytest.mark.slow
def test_two_ranks_match_one_rank_with_doubled_accumulation(runs: dict[str, Path]) -> None:
    one, two = _losses(runs["one_rank"]), _losses(runs["two_ranks"])
    assert [step for step, _ in two] == [step for step, _ in one] == list(range(MAX_ITERS))
    worst = max(abs(a - b) / abs(a) for (_, a), (_, b) in zip(one, two, strict=True))
    assert worst < 1e-5, f"largest relative loss difference {worst:.3g}"
    assert one[-1][1] < one[0][1] - 0.5  # it really trained


@pytest.mark.slow
def test_only_rank_zero_writes(runs: dict[str, Path]) -> None:
    out = runs["two_ranks"]
    assert read_writes(runs["root"] / "audit", 1) == []
    written = {entry.split(" ", 1)[1] for entry in read_writes(runs["root"] / "audit", 0)}
    files = sorted(path for path in out.rglob("*") if path.is_file())
    assert [path for path in files if str(path) not in written] == []  # the audit saw every file made
    assert len(list((out / "logs" / "tb").iterdir())) == 1  # one event file
    assert sorted(p.name for p in out.iterdir()) == [".lock", "ckpt_best.pt", "ckpt_last.pt", "logs"]  # rank 0's lock
    ckpt = load_checkpoint(out / "ckpt_last.pt")
    assert ckpt.iter_num == MAX_ITERS
    assert ckpt.rank_states is not None
    assert [state["data_state"]["rank"] for state in ckpt.rank_states] == [0, 1]


def _kill_rank_one(marker: Path) -> dict[str, str]:
    return kill_spec(rank=1, after_iter=KILL_AFTER_ITER, steps=STEPS_PAST_CHECKPOINT, marker=marker)


def _communicate(launcher: subprocess.Popen[str]) -> str:
    """Wait for the job; if it hangs, end all of its processes (the launcher leads a session)."""
    try:
        output, _ = launcher.communicate(timeout=DEATH_TIMEOUT_S)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()
    return output


@pytest.mark.slow
def test_dead_rank_ends_job_and_rerun_resumes_exactly(runs: dict[str, Path]) -> None:
    root = runs["root"]
    out = root / "killed"
    config = write_toml(root / "killed.toml", {"train": _table(root / "ds", out, grad_accum_steps=1)})
    launcher = start(config, nproc=2, module=KILL_SWITCH, env=_kill_rank_one(root / "killed.marker"))
    output = _communicate(launcher)
    assert launcher.returncode != 0
    assert (root / "killed.marker").exists()  # rank 1 reached the kill point
    # torchrun names the rank that died and how.
    assert "rank      : 1" in output, output[-3000:]
    assert "Signal 9 (SIGKILL)" in output or "exitcode  : -9" in output, output[-3000:]

    assert load_checkpoint(out / "ckpt_last.pt").iter_num == KILL_AFTER_ITER
    result = make_train(config, nproc=2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from {out / 'ckpt_last.pt'} at iter {KILL_AFTER_ITER}" in result.stderr
    assert _losses(out) == _losses(runs["two_ranks"])  # same world size: exact, every step
    assert load_checkpoint(out / "ckpt_last.pt").iter_num == MAX_ITERS


@pytest.mark.slow
def test_torchrun_max_restarts_resumes_the_job_by_itself(runs: dict[str, Path]) -> None:
    """torchrun --max-restarts=1: after rank 1 dies, torchrun starts both ranks again and they
    continue from ckpt_last.pt without anyone rerunning anything; the job then succeeds."""
    root = runs["root"]
    out = root / "restarted"
    config = write_toml(root / "restarted.toml", {"train": _table(root / "ds", out, grad_accum_steps=1)})
    marker = root / "restarted.marker"
    launcher = start(config, nproc=2, max_restarts=1, module=KILL_SWITCH, env=_kill_rank_one(marker))
    output = _communicate(launcher)
    assert launcher.returncode == 0, output[-3000:]
    assert marker.exists()  # rank 1 was killed once (the restarted round finds the marker)
    resumed = re.findall(rf"resuming from {re.escape(str(out / 'ckpt_last.pt'))} at iter (\d+)", output)
    assert resumed == [str(KILL_AFTER_ITER)], output[-3000:]  # once: rank 0 of the restarted workers logs it
    assert _losses(out) == _losses(runs["two_ranks"])  # same world size: exact, every step
    assert load_checkpoint(out / "ckpt_last.pt").iter_num == MAX_ITERS


@pytest.fixture(scope="module")
def fsdp_run(runs: dict[str, Path]) -> Path:
    """The uninterrupted 2-rank FSDP run."""
    root = runs["root"]
    out = root / "fsdp"
    table = _table(root / "ds", out, grad_accum_steps=1, parallel="fsdp")
    result = run(write_toml(root / "fsdp.toml", {"train": table}), nproc=2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rank(s) (fsdp)" in result.stderr
    return out


@pytest.mark.slow
def test_fsdp_trains_like_ddp_and_saves_full_weights(runs: dict[str, Path], fsdp_run: Path) -> None:
    root = runs["root"]
    out = fsdp_run
    ddp, fsdp = _losses(runs["two_ranks"]), _losses(out)
    assert [step for step, _ in fsdp] == list(range(MAX_ITERS))
    worst = max(abs(a - b) / abs(a) for (_, a), (_, b) in zip(ddp, fsdp, strict=True))
    assert worst < 1e-5, f"largest relative loss difference {worst:.3g}"

    sharded, replicated = load_checkpoint(out / "ckpt_last.pt"), load_checkpoint(runs["two_ranks"] / "ckpt_last.pt")
    assert {k: v.shape for k, v in sharded.model.items()} == {k: v.shape for k, v in replicated.model.items()}
    GPT(sharded.arch).load_state_dict(sharded.model)  # full tensors, no DTensor shards
    assert sharded.optimizer is not None
    assert len(sharded.optimizer["state"]) == len(list(GPT(sharded.arch).parameters()))

    single = root / "fsdp_to_single"
    single.mkdir()
    shutil.copy(out / "ckpt_last.pt", single / "ckpt_last.pt")
    table = _table(root / "ds", single, grad_accum_steps=2)
    table["runtime"]["max_iters"] = MAX_ITERS + 2
    with pytest.raises(CheckpointError) as error:
        train(train_config(table))
    assert str(error.value) == (
        f"{single / 'ckpt_last.pt'}: optimizer state was written by an FSDP run: resume it with "
        "train.runtime.parallel = 'fsdp' under torchrun (the weights alone load anywhere)"
    )


@pytest.mark.slow
def test_fsdp_killed_then_rerun_at_the_same_world_size_resumes_exactly(runs: dict[str, Path], fsdp_run: Path) -> None:
    root = runs["root"]
    out = root / "fsdp_killed"
    config = write_toml(
        root / "fsdp_killed.toml", {"train": _table(root / "ds", out, grad_accum_steps=1, parallel="fsdp")}
    )
    launcher = start(config, nproc=2, module=KILL_SWITCH, env=_kill_rank_one(root / "fsdp_killed.marker"))
    output = _communicate(launcher)
    assert launcher.returncode != 0, output[-3000:]
    assert (root / "fsdp_killed.marker").exists()  # rank 1 reached the kill point
    assert load_checkpoint(out / "ckpt_last.pt").iter_num == KILL_AFTER_ITER
    result = run(config, nproc=2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from {out / 'ckpt_last.pt'} at iter {KILL_AFTER_ITER}" in result.stderr
    assert _losses(out) == _losses(fsdp_run)  # same world size: exact, every step
    resumed, uninterrupted = load_checkpoint(out / "ckpt_last.pt"), load_checkpoint(fsdp_run / "ckpt_last.pt")
    assert resumed.iter_num == MAX_ITERS
    assert all(torch.equal(value, uninterrupted.model[key]) for key, value in resumed.model.items())


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_in_one_process(runs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    root = runs["root"]
    out = root / "two_to_one"
    out.mkdir()
    shutil.copy(runs["two_ranks"] / "ckpt_last.pt", out / "ckpt_last.pt")
    table = _table(root / "ds", out, grad_accum_steps=2)
    table["runtime"]["max_iters"] = MAX_ITERS + 10
    with caplog.at_level(logging.INFO, logger="ml_playground.train"):
        result = train(train_config(table))
    assert f"resuming from {out / 'ckpt_last.pt'} at iter {MAX_ITERS}" in caplog.text
    assert "was written by 2 rank(s), now 1: weights, optimizer and step resume, but the data order changes" in (
        caplog.text
    )
    assert result.iter_num == MAX_ITERS + 10
    resumed = load_checkpoint(out / "ckpt_last.pt")
    assert resumed.optimizer is not None
    steps = {int(state["step"]) for state in resumed.optimizer["state"].values()}
    assert steps == {MAX_ITERS + 10}  # Adam continued from the 2-rank run's step count
    assert resumed.rank_states is None


@pytest.mark.slow
def test_ranks_share_initial_weights_but_draw_their_own_dropout(runs: dict[str, Path]) -> None:
    """`run` seeds every rank alike before building the model (DDP would hide a difference by
    broadcasting rank 0's weights, FSDP would shard mismatched ones), then reseeds each rank, so
    the ranks' dropout masks differ (one shared stream would repeat the same mask on every rank)."""
    root = runs["root"]
    table = _table(root / "ds", root / "probe", grad_accum_steps=1)
    table["model"]["dropout"] = 0.1
    table["runtime"] |= {"max_iters": 2, "eval_interval": 2}
    config = write_toml(root / "probe.toml", {"train": table})
    command = torchrun_command("tests.support.rank_probe", str(config), str(root / "probe_records"), nproc=2)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment(), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    records = [json.loads((root / "probe_records" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]
    masks = [record["first_dropout_mask"] for record in records]
    assert len(masks[0]) == len(masks[1]) == 4 * BLOCK * 32  # batch x block x n_embd
    for mask in masks:
        assert 0.05 < mask.count("1") / len(mask) < 0.15  # dropout 0.1 really dropped
    assert masks[0] != masks[1]


@pytest.mark.slow
def test_muon_under_ddp_trains_like_one_rank(tmp_path: Path) -> None:
    """optimizer = "muon" under DDP: gradients are all-reduced before the step, so Muon sees the
    same whole matrices as one rank with doubled accumulation (Muon orthogonalises in bfloat16,
    hence the looser bound)."""
    write_char_dataset(tmp_path / "ds", text_with_whole_steps(BLOCK, WINDOWS_PER_STEP, repeats=1))
    muon = {"optimizer": "muon", "learning_rate": 1e-2, "muon_learning_rate": 0.02}
    iters = MAX_ITERS

    def table(out_dir: Path, grad_accum_steps: int) -> dict[str, Any]:
        base = _table(tmp_path / "ds", out_dir, grad_accum_steps=grad_accum_steps)
        base["runtime"] = {**base["runtime"], "max_iters": iters}
        base["schedule"] = {**base["schedule"], "lr_decay_iters": iters}
        return {**base, "optim": {**base["optim"], **muon}}

    train(train_config(table(tmp_path / "one", 2)))
    result = run(write_toml(tmp_path / "two.toml", {"train": table(tmp_path / "two", 1)}), nproc=2)
    assert result.returncode == 0, result.stdout + result.stderr
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [step for step, _ in two] == [step for step, _ in one] == list(range(iters))
    worst = max(abs(a - b) / abs(a) for (_, a), (_, b) in zip(one, two, strict=True))
    assert worst < 5e-3, f"largest relative loss difference {worst:.3g}"
    assert one[-1][1] < one[0][1] - 0.5
