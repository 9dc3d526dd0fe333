from __future__ import annotations

import logging
import math
import os
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.config import GPTConfig
from ml_playground.data.meta import read_meta
from ml_playground.errors import CheckpointError, ConfigError, DataError, DeviceError
from ml_playground.model import GPT
from ml_playground.runtime import mps_available
from ml_playground.train.checkpoint import MODEL_ARG_KEYS, load_checkpoint, model_args_of
from ml_playground.train.loop import train
from ml_playground.train.metrics import flops_per_token
from ml_playground.train.modes import padded_vocab_size, resolve_architecture
from tests.support.tiny_training import TEXT, read_scalars, tiny_train_table, train_config, write_char_dataset

VOCAB = len(set(TEXT))
PADDED = 64  # VOCAB rounded up to the default vocab_multiple
# best_val_loss of `table`'s run with vocab_multiple = 1, recorded before vocabulary padding existed.
UNPADDED_BEST_VAL_LOSS = 3.210308313369751


@pytest.fixture
def table(tmp_path: Path) -> dict[str, Any]:
    write_char_dataset(tmp_path / "ds")
    return tiny_train_table(tmp_path / "ds", tmp_path / "out")


def test_run_writes_a_complete_checkpoint(table: dict[str, Any]) -> None:
    cfg = train_config(table)
    result = train(cfg)
    assert result.iter_num == 6
    out = cfg.runtime.out_dir
    assert sorted(p.name for p in out.iterdir()) == [".lock", "ckpt_best.pt", "ckpt_last.pt", "logs"]
    assert (out / ".lock").read_text() == f"{os.getpid()}\n"  # the run's out_dir lock names its holder
    ckpt = load_checkpoint(out / "ckpt_last.pt")
    assert ckpt.iter_num == 6
    assert model_args_of(ckpt.arch) == {
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 16,
        "block_size": 16,
        "bias": False,
        "vocab_size": PADDED,
        "dropout": 0.0,
    }
    assert ckpt.arch.real_vocab_size == VOCAB
    assert ckpt.dataset_meta is not None
    assert ckpt.dataset_meta["kind"] == "char"
    assert ckpt.config["runtime"]["out_dir"] == str(out)
    assert ckpt.config["optim"]["learning_rate"] == 1e-2
    assert ckpt.optimizer is not None
    assert len(ckpt.optimizer["state"]) == sum(1 for _ in GPT(ckpt.arch).parameters())
    assert ckpt.rng is not None
    assert set(ckpt.rng) >= {"python", "numpy", "torch"}
    assert ckpt.data_state is not None
    assert ckpt.data_state["mode"] == "random"
    assert ckpt.scaler is None  # GradScaler only for float16 on CUDA
    assert math.isfinite(ckpt.best_val_loss)
    assert ckpt.best_val_loss == result.best_val_loss
    model = GPT(ckpt.arch)
    model.load_state_dict(ckpt.model)
    assert all(not key.startswith("_orig_mod.") for key in ckpt.model)


def test_checkpoint_architecture_takes_precedence(
    table: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(train_config(table))
    table["model"] = {**table["model"], "n_embd": 32, "n_head": 4}
    table["runtime"] = {**table["runtime"], "max_iters": 9}
    with caplog.at_level(logging.INFO, logger="ml_playground.train"):
        result = train(train_config(table))
    assert result.iter_num == 9
    assert (
        "the checkpoint's architecture takes precedence over TOML: n_head=2 (TOML 4), n_embd=16 (TOML 32)"
        in caplog.text
    )
    assert "resuming from" in caplog.text
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt_last.pt")
    assert (ckpt.arch.n_embd, ckpt.iter_num) == (16, 9)


LLAMA_OPTIONS = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1, "tie_embeddings": False}


def test_toml_options_build_the_model_and_a_resume_keeps_the_checkpoints(
    table: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table["model"] = {**table["model"], **LLAMA_OPTIONS, "mlp_multiple": 16}
    result = train(train_config(table))
    assert result.best_val_loss < math.log(VOCAB)
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt_last.pt")
    expected = {**LLAMA_OPTIONS, "mlp_hidden": 48}  # 8/3 x 16 rounded up to 16
    assert {key: getattr(ckpt.arch, key) for key in expected} == expected
    GPT(ckpt.arch).load_state_dict(ckpt.model)
    # Resuming from a TOML back at GPT-2's options: the checkpoint's architecture wins, and says so.
    table["model"] = {k: v for k, v in table["model"].items() if k not in LLAMA_OPTIONS}
    table["runtime"] = {**table["runtime"], "max_iters": 8}
    with caplog.at_level(logging.INFO, logger="ml_playground.train"):
        assert train(train_config(table)).iter_num == 8
    assert "position='rope' (TOML 'learned')" in caplog.text
    assert "tie_embeddings=False (TOML True)" in caplog.text
    assert "n_kv_head=1 (TOML 2)" in caplog.text  # sizes as numbers, not None for "the default"
    assert load_checkpoint(tmp_path / "out" / "ckpt_last.pt").arch.mlp == "swiglu"


def test_padded_size_is_what_the_checkpoint_file_records(table: dict[str, Any], tmp_path: Path) -> None:
    """The raw file keeps nanoGPT's model_args keys; vocab_size is the tensors' (padded) row count."""
    train(train_config(table))
    raw = torch.load(tmp_path / "out" / "ckpt_last.pt", map_location="cpu", weights_only=True)
    assert set(raw["model_args"]) == set(MODEL_ARG_KEYS)  # GPTConfig(**model_args) works in nanoGPT
    assert raw["model_args"]["vocab_size"] == PADDED
    assert raw["model"]["transformer.wte.weight"].shape == (PADDED, 16)
    assert raw["dataset_meta"]["vocab_size"] == VOCAB


def test_vocab_multiple_and_vocab_size_set_the_rows(table: dict[str, Any], tmp_path: Path) -> None:
    meta = read_meta(tmp_path / "ds" / "meta.json")

    def arch(**model: int) -> GPTConfig:
        table["model"] = {**tiny_train_table(tmp_path / "ds", tmp_path / "out")["model"], **model}
        return resolve_architecture(train_config(table), meta)

    assert (arch().vocab_size, arch().real_vocab_size) == (PADDED, VOCAB)
    assert (arch(vocab_multiple=1).vocab_size, arch(vocab_multiple=1).real_vocab_size) == (VOCAB, VOCAB)
    assert arch(vocab_multiple=10).vocab_size == 40
    assert (arch(vocab_size=65).vocab_size, arch(vocab_size=65).real_vocab_size) == (128, VOCAB)
    assert (
        arch(vocab_size=40, vocab_multiple=1).vocab_size,
        arch(vocab_size=40, vocab_multiple=1).real_vocab_size,
    ) == (
        40,
        VOCAB,
    )
    assert [padded_vocab_size(n, 64) for n in (1, 64, 65, 50257)] == [64, 64, 128, 50304]


def test_vocab_multiple_one_reproduces_the_unpadded_model(table: dict[str, Any], tmp_path: Path) -> None:
    table["model"] = {**table["model"], "vocab_multiple": 1}
    cfg = train_config(table)
    arch = resolve_architecture(cfg, read_meta(tmp_path / "ds" / "meta.json"))
    assert arch == GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16)
    result = train(cfg)
    assert result.best_val_loss == pytest.approx(UNPADDED_BEST_VAL_LOSS, rel=1e-5)


def test_padded_run_resumes_with_its_padded_rows(table: dict[str, Any], tmp_path: Path) -> None:
    train(train_config(table))
    table["model"] = {**table["model"], "vocab_multiple": 1}  # the checkpoint's architecture wins
    table["runtime"] = {**table["runtime"], "max_iters": 9}
    assert train(train_config(table)).iter_num == 9
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt_last.pt")
    assert (ckpt.arch.vocab_size, ckpt.arch.real_vocab_size) == (PADDED, VOCAB)


def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative name) with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_eval_only_evaluates_without_writing(table: dict[str, Any], tmp_path: Path) -> None:
    """eval_only on a fresh out_dir: one evaluation at iter 0, no step, no checkpoint; TensorBoard
    gets the eval scalars and nothing else is written."""
    out = tmp_path / "out"
    table["runtime"] = {**table["runtime"], "eval_only": True}
    result = train(train_config(table))
    assert result.iter_num == 0
    assert result.last_eval is not None
    files = _files(out)
    assert files.pop(".lock") == sha256(f"{os.getpid()}\n".encode()).hexdigest()  # the run's out_dir lock
    (event_file,) = files
    assert event_file.startswith("logs/tb/events.out.tfevents.")
    scalars = read_scalars(out / "logs" / "tb")
    ((step, val_loss),) = scalars["val/loss"]
    assert step == 0
    assert val_loss == pytest.approx(result.last_eval["val"])  # TensorBoard stores float32
    assert "train/loss" not in scalars


def test_eval_only_evaluates_the_checkpoint_and_changes_no_file(table: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    trained = train(train_config(table))
    before = {name: data for name, data in _files(out).items() if not name.startswith("logs/")}
    assert set(before) == {".lock", "ckpt_best.pt", "ckpt_last.pt"}
    table["runtime"] = {**table["runtime"], "eval_only": True}
    result = train(train_config(table))
    assert result.iter_num == trained.iter_num == 6
    assert result.last_eval == trained.last_eval  # the saved weights on the same eval batches
    assert {name: data for name, data in _files(out).items() if not name.startswith("logs/")} == before


def test_bfloat16_autocast_trains_on_cpu_like_float32(table: dict[str, Any], tmp_path: Path) -> None:
    """Eval and train losses of a bf16 autocast run stay within 1e-3 (relative) of float32's over
    3 steps (measured: ~1e-5), and differ from them: bf16 was really used."""
    losses: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for dtype in ("float32", "bfloat16"):
        table["runtime"] = {**table["runtime"], "dtype": dtype, "max_iters": 3, "out_dir": str(tmp_path / dtype)}
        train(train_config(table))
        scalars = read_scalars(tmp_path / dtype / "logs" / "tb")
        losses[dtype] = {tag: scalars[tag] for tag in ("val/loss", "eval/train_loss", "train/loss")}
    fp32, bf16 = losses["float32"], losses["bfloat16"]
    for tag, series in fp32.items():
        assert [step for step, _ in bf16[tag]] == [step for step, _ in series]
        assert [value for _, value in bf16[tag]] == pytest.approx([value for _, value in series], rel=1e-3), tag
    assert bf16 != fp32


def test_a_zero_step_run_from_scratch_evaluates_and_saves_its_initial_weights(
    table: dict[str, Any], tmp_path: Path
) -> None:
    """Its first step is its last: evaluated and saved (the benchmark's sampling models are such runs)."""
    table["runtime"] |= {"max_iters": 0}
    result = train(train_config(table))
    assert result.iter_num == 0
    assert result.last_eval is not None
    assert load_checkpoint(tmp_path / "out" / "ckpt_best.pt").iter_num == 0
    assert [step for step, _ in read_scalars(tmp_path / "out" / "logs" / "tb")["val/loss"]] == [0]


def test_tensorboard_scalars_are_written(table: dict[str, Any], tmp_path: Path) -> None:
    train(train_config(table))
    scalars = read_scalars(tmp_path / "out" / "logs" / "tb")
    expected = {"train/loss", "val/loss", "train/lr", "train/tokens_per_sec", "train/step_time_ms", "train/mfu"}
    assert expected <= set(scalars)
    assert [step for step, _ in scalars["train/loss"]] == list(range(6))
    assert [step for step, _ in scalars["val/loss"]] == [3, 6]  # a fresh run from scratch: not its random weights
    assert scalars["train/lr"][0][1] == pytest.approx(1e-2 / 3)
    assert all(value > 0 for _, value in scalars["train/tokens_per_sec"] + scalars["train/mfu"])


def test_unavailable_device_is_an_error(table: dict[str, Any]) -> None:
    device = "cuda" if mps_available() else "mps"
    table["runtime"] = {**table["runtime"], "device": device}
    with pytest.raises(DeviceError, match=f"device '{device}' is configured but"):
        train(train_config(table))


def test_unwritable_out_dir_is_an_error(table: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    table["runtime"] = {**table["runtime"], "out_dir": str(blocker / "run")}
    with pytest.raises(CheckpointError, match=r"train\.runtime\.out_dir: .*a_file/run cannot be written"):
        train(train_config(table))


def test_corrupt_last_checkpoint_is_reported_and_kept(table: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt_last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"ckpt_last\.pt: checkpoint is truncated or corrupted"):
        train(train_config(table))
    assert (out / "ckpt_last.pt").read_bytes() == b"PK\x03\x04 truncated"


def test_missing_dataset_and_small_vocab_are_errors(table: dict[str, Any], tmp_path: Path) -> None:
    table["model"] = {**table["model"], "vocab_size": 5}
    with pytest.raises(ConfigError, match=r"train\.model\.vocab_size: 5 is smaller than the dataset's vocabulary"):
        train(train_config(table))
    table["data"] = {**table["data"], "dataset_dir": str(tmp_path / "nowhere")}
    with pytest.raises(DataError, match="dataset metadata not found"):
        train(train_config(table))


def test_flops_per_token_count_the_padded_head_rows() -> None:
    """MFU measures the compute done: the head runs at the padded width."""
    base = GPTConfig(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16)
    padded = base.replace(vocab_size=64, real_vocab_size=40)
    unpadded_flops = flops_per_token(GPT(base), 16)
    assert flops_per_token(GPT(padded), 16) == unpadded_flops + 6 * 16 * (64 - 40)


@pytest.mark.parametrize(
    ("corpus", "difference"),
    [
        (TEXT[: len(TEXT) // 2], "train_tokens 1260 vs 630"),  # the same characters, other data
        (TEXT.swapcase(), "token"),  # another character table of the same size
    ],
)
def test_a_resume_on_another_dataset_is_refused(
    table: dict[str, Any], tmp_path: Path, corpus: str, difference: str
) -> None:
    """dataset_dir prepared again from another corpus: the resume would train on remapped ids."""
    train(train_config(table))
    write_char_dataset(tmp_path / "ds", corpus)
    table["runtime"]["max_iters"] = 8
    with pytest.raises(DataError) as error:
        train(train_config(table))
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'out' / 'ckpt_last.pt'} and {tmp_path / 'ds' / 'meta.json'} describe ")
    assert difference in message
    assert "\n" not in message
    assert load_checkpoint(tmp_path / "out" / "ckpt_last.pt").iter_num == 6  # nothing was written


def test_a_model_too_large_for_memory_is_one_line_naming_the_size(table: dict[str, Any]) -> None:
    """1 TiB of embedding rows: the allocation is refused at once (not a traceback), and the line
    names what did not fit and how much was asked for."""
    table["model"] = {**table["model"], "vocab_size": 2**34}
    with pytest.raises(DeviceError) as error:
        train(train_config(table))
    assert str(error.value) == "the model does not fit in the memory of cpu (1024.0 GiB asked for); make it smaller"
