"""Exit codes 6-11 as a user meets them: each triggered for real through the CLI, one error line.

6 device, 7 export, 8 missing optional dependency, 9 distributed (a misconfigured launch, a peer
that never joins the process group, a peer that joins but never enters a collective), 10 an
out_dir another run holds, 11 a run that diverges.

The distributed cases rendezvous at a store this test holds on a port it bound itself (as
torchrun's agent does), so no port is probed first and bound later by someone else.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.config import GPTConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.model import GPT
from ml_playground.train.checkpoint import Checkpoint, save_checkpoint
from ml_playground.train.lock import out_dir_lock
from tests.support.tiny_training import TEXT, tiny_train_table, write_char_dataset
from tests.support.torchrun import agent_store, write_toml

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN_VARIABLES = {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with this environment less torchrun's variables, plus `env`."""
    inherited = {key: value for key, value in os.environ.items() if key not in TORCHRUN_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,  # a hang, not a speed check
        env={**inherited, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The error line (the last on stderr, after any progress log lines): one line, no traceback."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.stderr[-3000:]
    return lines[-1]


def train_toml(tmp_path: Path, **runtime: Any) -> Path:
    write_char_dataset(tmp_path / "ds")
    table = tiny_train_table(tmp_path / "ds", tmp_path / "out")
    table["runtime"] |= runtime
    return write_toml(tmp_path / "train.toml", {"train": table})


def write_checkpoint(out_dir: Path, **options: Any) -> None:
    """A tiny char checkpoint; `options` are further GPTConfig fields."""
    itos = sorted(set(TEXT))
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=len(itos), n_layer=1, n_head=2, n_embd=16, **options)
    meta = DatasetMeta(kind="char", vocab_size=len(itos), dtype="uint16", itos=itos)
    checkpoint = Checkpoint(
        schema_version=1,
        model=GPT(config).state_dict(),
        arch=config,
        iter_num=1,
        best_val_loss=1.0,
        config={},
        dataset_meta=meta.to_dict(),
    )
    save_checkpoint(out_dir / "ckpt_best.pt", checkpoint)


def export_toml(tmp_path: Path, **ollama: Any) -> Path:
    table = {"enabled": True, "export_dir": str(tmp_path / "export"), "model_name": "tiny", "quant": "f32"}
    return write_toml(
        tmp_path / "export.toml",
        {"sample": {"runtime": {"out_dir": str(tmp_path / "run")}}, "export": {"ollama": table | ollama}},
    )


def test_unusable_dtype_is_exit_6(tmp_path: Path) -> None:
    line = one_line_error(cli("train", "shakespeare", "--exp-config", str(train_toml(tmp_path, dtype="float16"))), 6)
    assert line == "error: dtype 'float16' is not supported on cpu; use bfloat16 or float32"
    assert not (tmp_path / "out").exists()


def test_disabled_export_is_exit_7(tmp_path: Path) -> None:
    config = export_toml(tmp_path, enabled=False)
    line = one_line_error(cli("export", "shakespeare", "--exp-config", str(config)), 7)
    assert line == f"error: {config}: export.ollama.enabled is false; set it to true to export"


def test_architecture_without_a_counterpart_is_exit_7(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "run", position="rope", norm="rmsnorm", mlp="relu2")
    line = one_line_error(cli("export", "shakespeare", "--exp-config", str(export_toml(tmp_path))), 7)
    assert line.startswith(
        "error: export: no equivalent in Hugging Face / llama.cpp for train.model.mlp = 'relu2' "
        "(Llama/Qwen2/Qwen3 needs 'swiglu'); exportable are GPT-2"
    )
    assert not (tmp_path / "export").exists()


def test_missing_converter_is_exit_8(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "run")
    converter = tmp_path / "convert-hf-to-gguf.py"
    config = export_toml(tmp_path, convert_bin=str(converter))
    line = one_line_error(cli("export", "shakespeare", "--exp-config", str(config)), 8)
    assert line.startswith(f"error: export.ollama.convert_bin: {converter} not found; copy llama.cpp's converter")
    assert not (tmp_path / "export" / "model.gguf").exists()


def test_world_size_without_torchrun_is_exit_9(tmp_path: Path) -> None:
    config = train_toml(tmp_path)
    result = cli("train", "shakespeare", "--exp-config", str(config), env={"WORLD_SIZE": "2", "RANK": "0"})
    line = one_line_error(result, 9)
    assert line == "error: WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT not set: launch with torchrun (make train NPROC=N)"


def rank_zero_env(store: dict[str, str]) -> dict[str, str]:
    return {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", **store}


@pytest.mark.slow
def test_a_peer_that_never_joins_is_exit_9_after_dist_timeout_s(tmp_path: Path) -> None:
    """Rank 0 alone (rank 1 never starts): the process group's rendezvous gives up after
    dist_timeout_s and rank 0 ends with the one-line distributed error."""
    config = train_toml(tmp_path, dist_timeout_s=2.0)
    with agent_store() as store:
        line = one_line_error(cli("train", "shakespeare", "--exp-config", str(config), env=rank_zero_env(store)), 9)
    assert line.startswith("error: rank 0/2: init_process_group failed, a peer process died or timed out")
    assert "rerun to resume from ckpt_last.pt" in line


# Rank 1 of a 2-rank gloo group that joins the process group, then never enters a collective
# (a stuck peer); it says "joined" and waits until stdin closes.
_STUCK_PEER = """
import datetime, sys
import torch.distributed as dist
print("ready", flush=True)
dist.init_process_group("gloo", rank=1, world_size=2, timeout=datetime.timedelta(seconds=120))
print("joined", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_a_collective_that_times_out_is_exit_9(tmp_path: Path) -> None:
    """Rank 1 joins the group but never enters a collective: rank 0's first collective (DDP's
    check of parameter shapes across ranks) times out after dist_timeout_s, and rank 0 ends
    with the one-line distributed error, exit 9."""
    with agent_store() as store:
        env = {**os.environ, **store, "WORLD_SIZE": "2", "RANK": "1"}
        peer = subprocess.Popen(
            [sys.executable, "-c", _STUCK_PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert peer.stdout is not None
            assert peer.stdout.readline() == "ready\n"  # torch imported: it joins the store
            # 10 s to join leaves rank 1 ample time to connect; the collective then waits as long.
            config = train_toml(tmp_path, dist_timeout_s=10.0)
            result = cli("train", "shakespeare", "--exp-config", str(config), env=rank_zero_env(store))
            assert peer.stdout.readline() == "joined\n"
        finally:
            peer.kill()
            peer.communicate()
    line = one_line_error(result, 9)
    assert line.startswith("error: rank 0/2: training failed, a peer process died or timed out")
    assert "rerun to resume from ckpt_last.pt" in line


def test_an_out_dir_another_run_holds_is_exit_10(tmp_path: Path) -> None:
    config = train_toml(tmp_path)
    (tmp_path / "out").mkdir()
    with out_dir_lock(tmp_path / "out"):  # this process is the other run
        line = one_line_error(cli("train", "shakespeare", "--exp-config", str(config)), 10)
    assert line == (
        f"error: train.runtime.out_dir: {tmp_path / 'out'} is in use by a training run (pid {os.getpid()}); "
        "wait for it to end or choose another out_dir"
    )
    assert not (tmp_path / "out" / "ckpt_last.pt").exists()


def test_a_diverging_run_is_exit_11_and_saves_nothing_of_it(tmp_path: Path) -> None:
    """A learning rate no model survives: the first non-finite step stops the run before any
    checkpoint could hold it (a fresh run from scratch writes none before its first evaluation)."""
    write_char_dataset(tmp_path / "ds")
    table = tiny_train_table(tmp_path / "ds", tmp_path / "out")
    table["optim"] |= {"learning_rate": 1e30}
    table["runtime"] |= {"max_iters": 20, "eval_interval": 10, "log_interval": 1}
    config = write_toml(tmp_path / "train.toml", {"train": table})
    line = one_line_error(cli("train", "shakespeare", "--exp-config", str(config)), 11)
    assert re.fullmatch(r"error: training diverged at iter \d+: .*", line), line
    assert not list((tmp_path / "out").glob("ckpt_*.pt"))
