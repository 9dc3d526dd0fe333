"""Case 8: each architecture option and Muon switched on alone against one baseline, same token budget.

The baseline is the char-level CPU model of `bundestag_char_cpu.toml`'s [train] as GPT-2 (every
option of [train.model] at its default) with AdamW; each option row is that config with one key
changed, run for the same iterations, batch and block. The best row is case 3's config
(`--quality-config`) as shipped. Every row is one fresh `train`, one after the other.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
from pydantic.fields import FieldInfo

from ml_playground.bench.context import BenchContext
from ml_playground.bench.quality_case import preload_optimizer_imports, quality_config, timed_training
from ml_playground.bench.report import Ablation, Curve, Row
from ml_playground.config import PROJECT_ROOT, GPTConfig, ModelConfig, TrainConfig
from ml_playground.train.metrics import TB_SUBDIR, read_scalars

CASE = "8 ablation"
BASELINE_CONFIG = PROJECT_ROOT / "ml_playground" / "configs" / "bundestag_char_cpu.toml"
BASELINE = "baseline"
BEST = "best"
# Evaluations for the curves: every 100 of the baseline's 1000 iterations (the shipped config
# evaluates every 150); a --tiny run keeps its own.
EVAL_INTERVAL = 100
# [train.model] keys that give the model its size; every other key is an option the baseline
# leaves at its default (GPT-2).
SHAPE_KEYS = frozenset({"n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "vocab_size", "vocab_multiple"})

Value = str | int | float | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One key of [train.model] or [train.optim] set to a value other than the baseline's."""

    table: str  # "model" or "optim"
    key: str
    value: Value

    @property
    def name(self) -> str:
        """As the key reads in TOML: `tie_embeddings=false`, `optimizer=muon`."""
        if isinstance(self.value, bool):
            text = str(self.value).lower()
        elif isinstance(self.value, float) and self.value.is_integer():
            text = str(int(self.value))
        else:
            text = str(self.value)
        return f"{self.key}={text}"

    def applied_to(self, cfg: TrainConfig) -> TrainConfig:
        # Any: the key names the field; the config re-validates the value (pydantic, strict).
        change: dict[str, Any] = {self.key: self.value}
        if self.table == "optim":
            return replace(cfg, optim=replace(cfg.optim, **change))
        return replace(cfg, model=cfg.model.replace(**change))


def options(model: ModelConfig) -> tuple[Option, ...]:
    """The switches of the ablation, in the order they run: every architecture option of the type
    (GPTConfig) in its order, then Muon."""
    switches = (
        Option(table="model", key=key, value=value)
        for key, field in GPTConfig.model_fields.items()
        if key not in SHAPE_KEYS
        for value in switched_on(key, field, model)
    )
    return (*switches, Option(table="optim", key="optimizer", value="muon"))


def switched_on(key: str, field: FieldInfo, model: ModelConfig) -> list[Value]:
    """The values that switch an option away from GPT-2's block: a choice's other values, a flag's
    opposite, a number's `examples`; grouped-query attention keeps half the heads as key/value heads.
    Sizes without examples (rope_theta, norm_eps, mlp_hidden, ...) are not switches."""
    if key == "n_kv_head":
        return [max(1, model.n_head // 2)]
    if field.annotation is bool:
        return [not field.default]
    if get_origin(field.annotation) is Literal:
        return [choice for choice in get_args(field.annotation) if choice != field.default]
    return list(field.examples or [])


def gpt2_adamw(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with every architecture option at its default (GPT-2's block) and AdamW; its shape,
    data, rates and schedule unchanged."""
    model = cfg.model
    shape = ModelConfig(**{key: getattr(model, key) for key in model.model_fields_set & SHAPE_KEYS})
    return replace(cfg, model=shape, optim=replace(cfg.optim, optimizer="adamw"))


def _for_ablation(ctx: BenchContext, cfg: TrainConfig, slug: str) -> TrainConfig:
    """Its own out_dir under one parent (one TensorBoard run each) and the case's evaluation interval."""
    runtime = replace(cfg.runtime, out_dir=ctx.work_dir / "case8" / slug)
    # A --tiny run logs every step, so that its few steps still give logged throughput.
    runtime = replace(runtime, log_interval=1) if ctx.tiny else replace(runtime, eval_interval=EVAL_INTERVAL)
    return replace(cfg, runtime=runtime)


def ablation_configs(ctx: BenchContext, best_config: Path) -> list[tuple[str, TrainConfig]]:
    """(row name, config) in run order: the baseline, each option alone, the best config."""
    baseline = _for_ablation(ctx, gpt2_adamw(quality_config(ctx, BASELINE_CONFIG)), BASELINE)
    rows = [(BASELINE, baseline)]
    for option in options(baseline.model):
        rows.append((option.name, _for_ablation(ctx, option.applied_to(baseline), option.name)))
    rows.append((BEST, _for_ablation(ctx, quality_config(ctx, best_config), BEST)))
    return rows


def interpolate(curve: Curve, seconds: float) -> float | None:
    """Val loss at `seconds` on the straight line between the evaluations around it; None outside the curve."""
    times = [point.seconds for point in curve]
    if not curve or not times[0] <= seconds <= times[-1]:
        return None
    return float(np.interp(seconds, times, [point.val_loss for point in curve]))


def _logged_tokens_per_s(out_dir: Path) -> float | None:
    """Median of the trainer's logged tokens/s, leaving out the first window (warm-up)."""
    logged = [value for _, value in read_scalars(out_dir / TB_SUBDIR).get("train/tokens_per_sec", [])[1:]]
    return statistics.median(logged) if logged else None


def _measure(name: str, cfg: TrainConfig, config_path: Path) -> Ablation:
    run = timed_training(cfg)
    return Ablation(
        option=name,
        config=str(config_path),
        model=cfg.model,
        optim=cfg.optim,
        iters=cfg.runtime.max_iters,
        batch_size=cfg.data.batch_size,
        block_size=cfg.data.block_size,
        final_val_loss=run.curve[-1].val_loss,
        total_seconds=run.total_seconds,
        tokens_per_s=_logged_tokens_per_s(cfg.runtime.out_dir),
        equal_time_seconds=run.curve[-1].seconds,  # set for the whole case in `_against_baseline`
        val_loss_at_equal_time=run.curve[-1].val_loss,
        curve=run.curve,
    )


def _against_baseline(rows: list[Ablation]) -> list[Ablation]:
    """Every row at the wall time of the shortest run's last evaluation, and its deltas to the baseline."""
    equal_time = min(row.curve[-1].seconds for row in rows)
    at_equal = [
        replace(row, equal_time_seconds=equal_time, val_loss_at_equal_time=interpolate(row.curve, equal_time))
        for row in rows
    ]
    base = at_equal[0]
    compared = [base]
    for row in at_equal[1:]:
        at, base_at = row.val_loss_at_equal_time, base.val_loss_at_equal_time
        compared.append(
            replace(
                row,
                final_val_vs_baseline=row.final_val_loss - base.final_val_loss,
                val_at_equal_time_vs_baseline=None if at is None or base_at is None else at - base_at,
                time_vs_baseline=row.total_seconds / base.total_seconds,
            )
        )
    return compared


def _summary(row: Ablation) -> str:
    final = f"val {row.final_val_loss:.4f}"
    at = "-" if row.val_loss_at_equal_time is None else f"{row.val_loss_at_equal_time:.4f}"
    equal = f"at {row.equal_time_seconds:.1f} s val {at}"
    if row.final_val_vs_baseline is not None and row.time_vs_baseline is not None:
        final += f" ({row.final_val_vs_baseline:+.4f} vs baseline), {row.time_vs_baseline:.2f}x time"
        if row.val_at_equal_time_vs_baseline is not None:
            equal += f" ({row.val_at_equal_time_vs_baseline:+.4f})"
    speed = "" if row.tokens_per_s is None else f"; {row.tokens_per_s:,.0f} tok/s"
    same = "" if row.same_run_as is None else f" (the {row.same_run_as}'s config: its run)"
    return f"{final}; {equal}{speed}; {row.iters} iters in {row.total_seconds:.1f} s{same}"


def _same_run(cfg: TrainConfig, other: TrainConfig) -> bool:
    """The same run but for where it writes."""
    return replace(cfg, runtime=replace(cfg.runtime, out_dir=other.runtime.out_dir)) == other


def _keep_logs(cfg: TrainConfig, name: str, logs_dir: Path) -> None:
    """The run's TensorBoard events as `logs_dir/<row>/logs/tb`: one run per row under one parent."""
    shutil.copytree(cfg.runtime.out_dir / TB_SUBDIR, logs_dir / name / TB_SUBDIR)


def case8_ablation(ctx: BenchContext, best_config: Path, logs_dir: Path | None = None) -> list[Row]:
    """The baseline, each option alone, the best config: one run each, in that order. With `logs_dir`,
    each run's TensorBoard events are kept there (`make tensorboard LOGDIR=<logs_dir>`)."""
    preload_optimizer_imports()
    if logs_dir is not None:
        shutil.rmtree(logs_dir, ignore_errors=True)  # rows of an earlier bench are not this one's
    configs = ablation_configs(ctx, best_config)
    baseline_cfg = configs[0][1]
    measured: list[Ablation] = []
    for name, cfg in configs:
        if name == BEST and _same_run(cfg, baseline_cfg):
            measured.append(replace(measured[0], option=BEST, config=str(best_config), same_run_as=BASELINE))
            continue
        config_path = best_config if name == BEST else BASELINE_CONFIG
        measured.append(_measure(name, cfg, config_path))
        if logs_dir is not None:
            _keep_logs(cfg, name, logs_dir)
    rows = _against_baseline(measured)
    return [Row(case=CASE, variant=row.option, summary=_summary(row), metrics=row) for row in rows]
