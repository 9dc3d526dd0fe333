"""The benchmark's training runs go through `run` on a tiny corpus; its configs are built, not parsed back.

No timing is asserted: only how many steps were stamped and what the runs wrote.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml_playground.bench.context import BenchContext, Peaks
from ml_playground.bench.quality_case import quality_config
from ml_playground.bench.runner import DEFAULT_QUALITY_CONFIG
from ml_playground.bench.runs import precision, timed_steps, train_config
from ml_playground.bench.shapes import TINY
from ml_playground.config_loader import load_experiment_config, require_train
from ml_playground.train.checkpoint import LAST_NAME, load_checkpoint
from tests.support.tiny_training import write_char_dataset


@pytest.fixture
def ctx(tmp_path: Path) -> BenchContext:
    char_dir = tmp_path / "char"
    return BenchContext(
        device_name="cpu",
        device=torch.device("cpu"),
        sizes=TINY,
        warmup=1,
        reps=2,
        corpus=tmp_path / "corpus.txt",
        char_dir=char_dir,
        char_meta=write_char_dataset(char_dir),
        work_dir=tmp_path / "work",
        peaks=Peaks(float32=1e9, bfloat16=2e9),
        nanogpt=None,
        compile=False,
        force_bf16=False,
        tiny=True,
    )


def test_timed_steps_stamps_every_step_of_a_real_run_and_starts_fresh(ctx: BenchContext) -> None:
    cfg = train_config(ctx, TINY.small, batch_size=2)
    out_dir = ctx.work_dir / "steps"
    first = timed_steps(ctx, cfg, out_dir, warmup=1, reps=2)
    assert len(first.timing.samples) == 2  # 1 + 1 + 2 steps: the first has no stamp before it, one warm-up
    assert len(first.losses) == 4
    assert first.flops_per_token > 0
    assert load_checkpoint(out_dir / LAST_NAME).iter_num == 4  # the run's own checkpoint after the last step
    again = timed_steps(ctx, cfg, out_dir, warmup=1, reps=2)  # not resumed from the checkpoint above
    assert again.losses == first.losses  # the same seeded weights and batches


def test_precision_variant_changes_only_dtype_compile_and_peak(ctx: BenchContext) -> None:
    cfg = train_config(ctx, TINY.mid, batch_size=2)
    bf16 = precision(ctx, cfg, dtype="bfloat16", compile=True)
    assert (bf16.runtime.dtype, bf16.runtime.compile, bf16.runtime.peak_flops) == ("bfloat16", True, 2e9)
    assert (bf16.model, bf16.data, bf16.optim, bf16.schedule) == (cfg.model, cfg.data, cfg.optim, cfg.schedule)


def test_quality_config_keeps_the_shipped_settings_on_the_bench_corpus(ctx: BenchContext) -> None:
    shipped = require_train(load_experiment_config(DEFAULT_QUALITY_CONFIG), DEFAULT_QUALITY_CONFIG)
    cfg = quality_config(ctx, DEFAULT_QUALITY_CONFIG)
    assert cfg.data.dataset_dir == ctx.char_dir
    assert cfg.runtime.out_dir == ctx.work_dir / "case3"
    assert cfg.runtime.peak_flops == ctx.peaks.float32
    assert cfg.optim == shipped.optim
    # --tiny: the small shape and a 6-step run
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.data.block_size) == (1, 16, 16)
    assert (cfg.runtime.max_iters, cfg.runtime.eval_interval) == (6, 3)
