"""Case 8: each architecture option and Muon switched on alone against a GPT-2 + AdamW baseline
(`bundestag_char_cpu.toml`'s [train]) for the same token budget, and the best config (case 3's)."""

from __future__ import annotations

import importlib
import shutil
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
from pydantic.fields import FieldInfo

from ml_playground.bench.context import BenchContext
from ml_playground.bench.quality_case import shipped_config, timed_training
from ml_playground.bench.report import Ablation, Curve, Row, TimedRun
from ml_playground.config import PROJECT_ROOT, GPTConfig, ModelConfig, TrainConfig
from ml_playground.train.metrics import TB_SUBDIR, read_scalars

CASE = "8 ablation"
BASELINE_CONFIG = PROJECT_ROOT / "ml_playground" / "configs" / "bundestag_char_cpu.toml"
BASELINE, BEST = "baseline", "best"
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

    table: Literal["model", "optim"]
    key: str
    value: Value

    @property
    def name(self) -> str:
        """As the key reads in TOML: `tie_embeddings=false`, `optimizer=muon`, `n_kv_head=1`."""
        value = self.value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return f"{self.key}={str(value).lower() if isinstance(value, bool) else value}"

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
    shape = ModelConfig(**{key: getattr(cfg.model, key) for key in cfg.model.model_fields_set & SHAPE_KEYS})
    return replace(cfg, model=shape, optim=replace(cfg.optim, optimizer="adamw"))


def ablation_configs(ctx: BenchContext, best_config: Path) -> list[tuple[str, TrainConfig]]:
    """(row name, config) in run order: the baseline, each option alone, the best config; each in
    its own out_dir under one parent (one TensorBoard run each), at the case's evaluation interval."""

    def row(name: str, cfg: TrainConfig) -> tuple[str, TrainConfig]:
        runtime = replace(cfg.runtime, out_dir=ctx.work_dir / "case8" / name)
        # A --tiny run logs every step, so that its few steps still give logged throughput.
        runtime = replace(runtime, log_interval=1) if ctx.tiny else replace(runtime, eval_interval=EVAL_INTERVAL)
        return name, replace(cfg, runtime=runtime)

    baseline = row(BASELINE, gpt2_adamw(shipped_config(ctx, BASELINE_CONFIG, ctx.work_dir / "case8")))
    switched = [row(option.name, option.applied_to(baseline[1])) for option in options(baseline[1].model)]
    return [baseline, *switched, row(BEST, shipped_config(ctx, best_config, ctx.work_dir / "case8"))]


def interpolate(curve: Curve, seconds: float) -> float | None:
    """Val loss at `seconds` on the straight line between the evaluations around it; None outside the curve."""
    times = [point.seconds for point in curve]
    if not curve or not times[0] <= seconds <= times[-1]:
        return None
    return float(np.interp(seconds, times, [point.val_loss for point in curve]))


def _summary(row: Ablation) -> str:
    bpb = row.curve[-1].val_bpb if row.curve else None
    final = f"val {row.final_val_loss:.4f}" + ("" if bpb is None else f", {bpb:.4f} bits/byte")
    at = "-" if row.val_loss_at_equal_time is None else f"{row.val_loss_at_equal_time:.4f}"
    equal = f"at {row.equal_time_seconds:.1f} s val {at}"
    if row.final_val_vs_baseline is not None and row.time_vs_baseline is not None:
        final += f" ({row.final_val_vs_baseline:+.4f} vs baseline), {row.time_vs_baseline:.2f}x time"
        if row.val_at_equal_time_vs_baseline is not None:
            equal += f" ({row.val_at_equal_time_vs_baseline:+.4f})"
    speed = "" if row.tokens_per_s is None else f"; {row.tokens_per_s:,.0f} tok/s"
    same = "" if row.same_run_as is None else f" (the {row.same_run_as}'s config: its run)"
    return f"{final}; {equal}{speed}; {row.iters} iters in {row.total_seconds:.1f} s{same}"


def case8_ablation(ctx: BenchContext, best_config: Path, logs_dir: Path | None = None) -> list[Row]:
    """One run per row in order (the best row is the baseline's run when its [train] is the baseline's
    but for out_dir); deltas to the baseline, val loss at the shortest run's last evaluation. With
    `logs_dir`, each run's TensorBoard events are kept as `<logs_dir>/<row>/logs/tb`."""
    importlib.import_module("torch._dynamo")  # as case 3: torch.optim's one-time import, before any clock
    if logs_dir is not None:
        shutil.rmtree(logs_dir, ignore_errors=True)  # rows of an earlier bench are not this one's
    configs = ablation_configs(ctx, best_config)
    base_cfg = configs[0][1]
    same_run = replace(configs[-1][1], runtime=replace(configs[-1][1].runtime, out_dir=base_cfg.runtime.out_dir))
    measured: dict[str, tuple[TimedRun, float | None]] = {}
    for name, cfg in configs[:-1] if same_run == base_cfg else configs:
        run = timed_training(cfg)
        # Median of the trainer's logged tokens/s, leaving out the first window (warm-up).
        logged = [
            value for _, value in read_scalars(cfg.runtime.out_dir / TB_SUBDIR).get("train/tokens_per_sec", [])[1:]
        ]
        measured[name] = run, statistics.median(logged) if logged else None
        if logs_dir is not None:
            shutil.copytree(cfg.runtime.out_dir / TB_SUBDIR, logs_dir / name / TB_SUBDIR)
    equal_time = min(run.curve[-1].seconds for run, _ in measured.values())
    base = measured[BASELINE][0]
    base_at = interpolate(base.curve, equal_time)
    rows: list[Row] = []
    for name, cfg in configs:
        run, tokens_per_s = measured.get(name, measured[BASELINE])
        at, vs = interpolate(run.curve, equal_time), name != BASELINE
        metrics = Ablation(
            option=name,
            config=str(best_config if name == BEST else BASELINE_CONFIG),
            model=cfg.model,
            optim=cfg.optim,
            iters=cfg.runtime.max_iters,
            batch_size=cfg.data.batch_size,
            block_size=cfg.data.block_size,
            final_val_loss=run.curve[-1].val_loss,
            total_seconds=run.total_seconds,
            tokens_per_s=tokens_per_s,
            equal_time_seconds=equal_time,
            val_loss_at_equal_time=at,
            curve=run.curve,
            final_val_vs_baseline=run.curve[-1].val_loss - base.curve[-1].val_loss if vs else None,
            val_at_equal_time_vs_baseline=at - base_at if vs and at is not None and base_at is not None else None,
            time_vs_baseline=run.total_seconds / base.total_seconds if vs else None,
            same_run_as=None if name in measured else BASELINE,
        )
        rows.append(Row(case=CASE, variant=name, summary=_summary(metrics), metrics=metrics))
    return rows
