"""Case 9's two commands, built without running them: ours loads as a config of nanoGPT's README CPU
shape on the bench's dataset; nanoGPT's runs in a prepared copy of the checkout, which must hold train.py."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from ml_playground.bench.context import BenchContext
from ml_playground.bench.nanogpt import load_nanogpt
from ml_playground.bench.startup_case import nanogpt, ours
from ml_playground.config_loader import load_experiment_config, require
from ml_playground.errors import ConfigError
from tests.support import nanogpt_standin
from tests.support.tiny_training import TEXT


def test_our_command_trains_one_iteration_of_the_small_shape_on_the_bench_dataset(ctx: BenchContext) -> None:
    process = ours(ctx)
    assert process.command[:5] == [sys.executable, "-m", "ml_playground.cli", "train", "shakespeare_char"]
    config = Path(process.command[-1])
    cfg = require(load_experiment_config(config).train, config, "train")
    small = ctx.sizes.small
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (small.n_layer, small.n_head, small.n_embd)
    assert (cfg.data.batch_size, cfg.data.block_size) == (ctx.sizes.small_batch, small.block_size)
    assert (cfg.model.dropout, cfg.model.bias, cfg.runtime.compile) == (0.0, False, False)
    assert (cfg.runtime.max_iters, cfg.runtime.log_interval, cfg.runtime.device) == (1, 1, "cpu")
    assert cfg.data.dataset_dir == ctx.char_dir
    assert cfg.runtime.out_dir == process.out_dir


def _checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "nanoGPT"
    (checkout / "config").mkdir(parents=True)
    (checkout / "data" / "shakespeare_char").mkdir(parents=True)
    shutil.copy(Path(nanogpt_standin.__file__), checkout / "model.py")
    for name in ("configurator.py", "config/train_shakespeare_char.py"):
        (checkout / name).write_text("# stand-in\n", encoding="utf-8")
    # a prepare.py that writes what nanoGPT's writes, beside the input.txt the bench copies there
    (checkout / "data" / "shakespeare_char" / "prepare.py").write_text(
        "import pathlib\nhere = pathlib.Path(__file__).parent\n"
        "(here / 'train.bin').write_bytes((here / 'input.txt').read_bytes())\n",
        encoding="utf-8",
    )
    return checkout


def test_nanogpts_command_runs_train_py_in_a_prepared_copy(ctx: BenchContext, tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    (checkout / "train.py").write_text("# stand-in\n", encoding="utf-8")
    ctx.corpus.write_text(TEXT, encoding="utf-8")
    process = nanogpt(ctx, load_nanogpt(checkout).checkout)
    assert process.command[1:3] == ["train.py", "config/train_shakespeare_char.py"]
    assert "--max_iters=1" in process.command
    assert "--compile=False" in process.command
    assert (process.cwd / "train.py").is_file()
    assert (process.cwd / "data" / "shakespeare_char" / "train.bin").read_text(encoding="utf-8") == TEXT  # prepared
    assert not (checkout / "data" / "shakespeare_char" / "input.txt").exists()  # nothing written into the checkout


def test_a_checkout_without_train_py_is_a_config_error_naming_it(ctx: BenchContext, tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    with pytest.raises(ConfigError, match=r"train\.py not found"):
        nanogpt(ctx, checkout)
