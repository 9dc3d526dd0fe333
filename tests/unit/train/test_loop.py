from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ml_playground
from ml_playground import cli
from ml_playground.config import GPTConfig
from ml_playground.data.batches import BatchSource
from ml_playground.data.meta import read_meta
from ml_playground.model import GPT
from ml_playground.runtime import Runtime
from ml_playground.train import loop as loop_module
from ml_playground.train.checkpoint import load_checkpoint
from ml_playground.train.distributed import DistInfo
from ml_playground.train.loop import LoopContext, TrainState, build_loop, evaluate, maybe_save, train_step
from ml_playground.train.parallel import Parallel
from tests.support.tiny_training import TEXT, tiny_train_table, train_config, write_char_dataset
from tests.support.torchrun import write_toml

VOCAB = len(set(TEXT))


@pytest.fixture
def table(tmp_path: Path) -> dict[str, Any]:
    write_char_dataset(tmp_path / "ds")
    return tiny_train_table(tmp_path / "ds", tmp_path / "out")


def _loop_for(table: dict[str, Any], *, always: bool) -> LoopContext:
    table["runtime"]["always_save_checkpoint"] = always
    cfg = train_config(table)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**table["model"], vocab_size=VOCAB))
    batches = BatchSource(
        train_files=[cfg.data.train_path],
        val_files=[cfg.data.val_path],
        token_dtype=np.dtype("<u2"),
        batch_size=2,
        block_size=16,
        device=torch.device("cpu"),
    )
    return build_loop(
        cfg, Parallel(model), batches, Runtime(torch.device("cpu"), "float32"), dist=DistInfo(), dataset_meta=None
    )


def test_best_is_saved_only_on_improvement(table: dict[str, Any]) -> None:
    loop = _loop_for(table, always=False)
    out = loop.out_dir
    state = TrainState(iter_num=0)
    maybe_save(loop, state, 2.0)
    assert load_checkpoint(out / "ckpt_best.pt").iter_num == 0
    assert state.best_val_loss == 2.0
    state.iter_num = 3
    maybe_save(loop, state, 2.5)  # worse: only ckpt_last.pt moves on
    assert load_checkpoint(out / "ckpt_last.pt").iter_num == 3
    assert load_checkpoint(out / "ckpt_best.pt").iter_num == 0
    assert load_checkpoint(out / "ckpt_last.pt").best_val_loss == 2.0
    state.iter_num = 6
    maybe_save(loop, state, 1.5)
    assert load_checkpoint(out / "ckpt_best.pt").iter_num == 6
    assert state.best_val_loss == 1.5


def test_always_save_checkpoint_writes_best_at_every_eval(table: dict[str, Any]) -> None:
    loop = _loop_for(table, always=True)
    state = TrainState(iter_num=0)
    maybe_save(loop, state, 2.0)
    state.iter_num = 3
    maybe_save(loop, state, 2.5)
    assert load_checkpoint(loop.out_dir / "ckpt_best.pt").iter_num == 3
    assert state.best_val_loss == 2.0


def _gradients_of_train_steps(table: dict[str, Any], *, batch_size: int, accum: int, steps: int) -> list[Any]:
    """(mean loss, {name: gradient}) of each train_step, the gradients as the optimizer sees them."""
    table["data"] = {**table["data"], "batch_size": batch_size, "grad_accum_steps": accum, "sampler": "sequential"}
    table["optim"] = {**table["optim"], "grad_clip": 0.0}  # clipping would rescale a wrong gradient
    cfg = train_config(table)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**table["model"], vocab_size=VOCAB))
    batches = BatchSource.for_run(cfg, read_meta(cfg.data.meta_path), torch.device("cpu"))
    runtime = Runtime(torch.device("cpu"), "float32")
    loop = build_loop(cfg, Parallel(model), batches, runtime, dist=DistInfo(), dataset_meta=None)
    seen: list[dict[str, torch.Tensor]] = []

    def record(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        seen.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})

    loop.optimizer.register_step_pre_hook(record)
    losses = [float(train_step(loop)[0]) for _ in range(steps)]
    return list(zip(losses, seen, strict=True))


def test_grad_accumulation_matches_one_big_batch(table: dict[str, Any]) -> None:
    """batch 8 x accum 1 and batch 4 x accum 2 see the same windows (sequential sampler): the
    gradient the optimizer steps with is the same mean, not a sum over micro-steps."""
    big = _gradients_of_train_steps(table, batch_size=8, accum=1, steps=3)
    split = _gradients_of_train_steps(table, batch_size=4, accum=2, steps=3)
    for (big_loss, big_grads), (split_loss, split_grads) in zip(big, split, strict=True):
        assert split_loss == pytest.approx(big_loss, rel=1e-6)
        assert split_grads.keys() == big_grads.keys()
        assert len(big_grads) == sum(1 for _ in GPT(GPTConfig(**table["model"], vocab_size=VOCAB)).parameters())
        for name, grad in big_grads.items():
            torch.testing.assert_close(split_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_cli_reaches_the_models_forward_in_five_frames_of_the_package(
    table: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop reads top to bottom: from the CLI's train command to GPT.forward, every frame of
    ml_playground is one a reader follows (the command, the loop, the step, the loss, the model)."""
    stacks: list[list[str]] = []
    forward = GPT.forward

    def recording(self: GPT, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            package = Path(ml_playground.__file__).parent
            frames = [f for f in inspect.stack() if Path(f.filename).is_relative_to(package)]
            stacks.append([f"{Path(f.filename).stem}.{f.function}" for f in reversed(frames)])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", recording)
    table["runtime"]["max_iters"] = 1
    config = write_toml(tmp_path / "tiny.toml", {"train": table})
    assert cli.main(["train", "shakespeare", "--exp-config", str(config)]) == 0
    assert stacks
    # GPT.forward (replaced here by `recording`, a frame of this test) is called by the last: the
    # command, the loop, the step, the loss and the model are the five frames from `train` to it.
    assert stacks[0] == ["cli.main", "cli.cmd_train", "loop.train", "loop.train_step", "parallel.loss"]


@pytest.mark.parametrize("bound", [1, 3, 10**9])
def test_evaluation_takes_several_batches_per_forward_with_the_same_mean(
    table: dict[str, Any], monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    """The loss is the mean over the eval batches whatever their grouping into forwards; the
    token bound decides how many share one forward."""
    table["runtime"]["eval_iters"] = 7
    loop = _loop_for(table, always=False)
    model = loop.model.train(False)
    with torch.no_grad():
        expected = {
            split: sum(float(model(x, y).loss or 0) for x, y in loop.batches.eval_batches(split, 7)) / 7
            for split in ("train", "val")
        }
    batch = loop.batches.shape.batch_size
    tokens = batch * loop.batches.shape.block_size
    monkeypatch.setattr(loop_module, "EVAL_TOKENS_PER_FORWARD", tokens * bound)
    shapes: list[int] = []
    model.register_forward_hook(lambda _m, args, _out: shapes.append(args[0].size(0)))
    losses = evaluate(loop)
    assert losses == pytest.approx(expected, rel=1e-6)
    per_forward = min(bound, 7)
    sizes = [per_forward] * (7 // per_forward) + ([7 % per_forward] if 7 % per_forward else [])
    assert shapes == [n * batch for n in sizes] * 2  # train, then val
    assert model.training  # evaluation leaves the model training again
