"""The benchmark's training runs go through `train` on a tiny corpus; its configs are built, not parsed back.

No timing is asserted: only how many steps were stamped and what the runs wrote.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml_playground.bench.context import TINY, BenchContext
from ml_playground.bench.quality_case import shipped_config
from ml_playground.bench.report import Skipped, Throughput
from ml_playground.bench.runner import DEFAULT_QUALITY_CONFIG
from ml_playground.bench.train_cases import (
    case2_train_mid,
    logged_vs_wall,
    pooled,
    precision,
    timed_steps,
    train_config,
)
from ml_playground.config_loader import load_experiment_config, require
from ml_playground.train.checkpoint import LAST_NAME, load_checkpoint
from ml_playground.train.metrics import PrecisionProbe


def test_timed_steps_stamps_every_step_of_a_real_run_and_starts_fresh(ctx: BenchContext) -> None:
    cfg = train_config(ctx, TINY.small, batch_size=2)
    out_dir = ctx.work_dir / "steps"
    first = timed_steps(ctx, cfg, out_dir, warmup=1, reps=2)
    assert len(first.seconds) == 2  # 1 + 1 + 2 steps: the first has no stamp before it, one warm-up
    assert len(first.losses) == 4
    assert first.flops_per_token > 0
    assert load_checkpoint(out_dir / LAST_NAME).iter_num == 4  # the run's own checkpoint after the last step
    again = timed_steps(ctx, cfg, out_dir, warmup=1, reps=2)  # not resumed from the checkpoint above
    assert again.losses == first.losses  # the same seeded weights and batches
    assert first.logged is None  # one log step (0) in 4 steps: no window to compare


def test_timed_steps_sets_the_logged_windows_against_the_stamps(ctx: BenchContext) -> None:
    cfg = train_config(ctx, TINY.small, batch_size=2)
    cfg = replace(cfg, runtime=replace(cfg.runtime, log_interval=1))
    steps = timed_steps(ctx, cfg, ctx.work_dir / "logged", warmup=1, reps=3)
    assert steps.logged is not None
    assert steps.logged.steps == 3  # windows ending at log steps 2, 3, 4 (after warm-up step 1)
    assert steps.logged.logged_seconds > 0
    assert steps.logged.wall_seconds > 0


def test_logged_vs_wall_pairs_log_steps_after_warmup() -> None:
    stamps = dict(enumerate([0.0, 1.0, 3.0, 4.0, 6.0, 7.0, 9.0]))  # the end of steps 0..6
    step_ms = [(0, 500.0), (2, 1500.0), (4, 1500.0), (6, 1500.0)]  # log_interval 2
    agreement = logged_vs_wall(step_ms, stamps, first=1)
    assert agreement is not None
    # Windows (2, 4] and (4, 6]: 2 x 1.5 s each logged, stamps 9 - 3 = 6 s on the wall clock.
    assert (agreement.logged_seconds, agreement.wall_seconds, agreement.steps) == (6.0, 6.0, 4)
    assert pooled([agreement]) == 1.0
    slow_log = logged_vs_wall([(2, 1500.0), (4, 3000.0)], stamps, first=1)
    assert slow_log is not None
    assert pooled([slow_log]) == pytest.approx(3.0 / 6.0)  # logged tokens/s half the true ones
    assert pooled([slow_log, None, agreement]) == pytest.approx(9.0 / 12.0)  # the runs' steps together
    assert pooled([None]) is None
    assert logged_vs_wall(step_ms, stamps, first=5) is None  # one log step after warm-up
    # Stamps every 4 steps (a windowed clock): the span runs between the stamped log steps 0 and 4.
    windowed = logged_vs_wall(step_ms, {0: 0.0, 4: 6.0}, first=0)
    assert windowed is not None
    assert (windowed.logged_seconds, windowed.wall_seconds, windowed.steps) == (6.0, 6.0, 4)


def test_case2_skips_bf16_by_the_trainers_probe(ctx: BenchContext) -> None:
    slow = replace(ctx, bf16_probe=PrecisionProbe(float32_seconds=0.002, bfloat16_seconds=0.05))
    rows = case2_train_mid(slow)
    assert [row.variant for row in rows] == ["fp32", "bf16 autocast"]
    assert isinstance(rows[0].metrics, Throughput)
    assert rows[1].metrics == Skipped(fp32_probe_ms=2.0, bf16_probe_ms=50.0)
    assert "--force-bf16" in rows[1].summary


def test_precision_variant_changes_only_dtype_compile_and_peak(ctx: BenchContext) -> None:
    cfg = train_config(ctx, TINY.mid, batch_size=2)
    bf16 = precision(ctx, cfg, dtype="bfloat16", compile=True)
    assert (bf16.runtime.dtype, bf16.runtime.compile, bf16.runtime.peak_flops) == ("bfloat16", True, 2e9)
    assert (bf16.model, bf16.data, bf16.optim, bf16.schedule) == (cfg.model, cfg.data, cfg.optim, cfg.schedule)


def test_quality_config_keeps_the_shipped_settings_on_the_bench_corpus(ctx: BenchContext) -> None:
    shipped = require(load_experiment_config(DEFAULT_QUALITY_CONFIG).train, DEFAULT_QUALITY_CONFIG, "train")
    cfg = shipped_config(ctx, DEFAULT_QUALITY_CONFIG, ctx.work_dir / "case3")
    assert cfg.data.dataset_dir == ctx.char_dir
    assert cfg.runtime.out_dir == ctx.work_dir / "case3"
    assert cfg.runtime.peak_flops == ctx.peaks["float32"]
    assert cfg.optim == shipped.optim
    # --tiny: the small shape and a 6-step run
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.data.block_size) == (1, 16, 16)
    assert (cfg.runtime.max_iters, cfg.runtime.eval_interval) == (6, 3)
