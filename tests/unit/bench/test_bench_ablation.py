"""Case 8's configs (one option switched on per row against a GPT-2 + AdamW baseline) and a tiny run of
the case through `train`, its rows read back from the JSON report. No timing is asserted."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from ml_playground.bench.ablation_case import (
    BASELINE,
    BEST,
    CASE,
    ablation_configs,
    case8_ablation,
    gpt2_adamw,
    interpolate,
)
from ml_playground.bench.context import BenchContext
from ml_playground.bench.quality_case import shipped_config
from ml_playground.bench.report import EvalPoint, write_report
from ml_playground.config import PROJECT_ROOT, ModelConfig
from ml_playground.train.metrics import TB_SUBDIR, read_scalars

FAST_CONFIG = PROJECT_ROOT / "ml_playground" / "configs" / "shakespeare_char_fast_cpu.toml"
OPTIONS = {
    "position=rope",
    "norm=rmsnorm",
    "mlp=swiglu",
    "mlp=relu2",
    "qk_norm=true",
    "qkv_bias=true",
    "n_kv_head=1",  # half of the tiny shape's two heads
    "tie_embeddings=false",
    "logit_softcap=15",
    "optimizer=muon",
}


def _changed(settings: dict[str, Any], baseline: dict[str, Any]) -> set[str]:
    return {key for key in settings.keys() | baseline.keys() if baseline.get(key) != settings.get(key)}


def _keys(model: ModelConfig) -> dict[str, Any]:
    """[train.model] as its TOML table would read (the keys set; sizes left out follow them)."""
    return {key: getattr(model, key) for key in model.model_fields_set}


def test_every_option_row_differs_from_the_baseline_in_its_key_alone(ctx: BenchContext) -> None:
    configs = dict(ablation_configs(ctx, FAST_CONFIG))
    assert set(configs) == {BASELINE, BEST, *OPTIONS}
    baseline = configs[BASELINE]
    settings = {**_keys(baseline.model), **asdict(baseline.optim)}
    for name in OPTIONS:
        cfg = configs[name]
        assert _changed({**_keys(cfg.model), **asdict(cfg.optim)}, settings) == {name.split("=")[0]}, name
        # the same token budget and everything else but where the run writes
        assert replace(cfg, model=baseline.model, optim=baseline.optim, runtime=baseline.runtime) == baseline
        assert replace(cfg.runtime, out_dir=baseline.runtime.out_dir) == baseline.runtime
    out_dirs = {cfg.runtime.out_dir for cfg in configs.values()}
    assert len(out_dirs) == len(configs)
    assert {path.parent for path in out_dirs} == {ctx.work_dir / "case8"}  # one TensorBoard parent
    assert configs[BEST].optim.optimizer == "muon"


def test_baseline_is_gpt2_with_adamw_in_the_configs_shape(ctx: BenchContext) -> None:
    shipped = shipped_config(ctx, FAST_CONFIG, ctx.work_dir / "case3")
    fancy = replace(
        shipped, model=shipped.model.replace(position="rope", qk_norm=True, n_kv_head=1, logit_softcap=30.0)
    )
    plain = gpt2_adamw(fancy)
    shape = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")
    assert ModelConfig(**{key: getattr(fancy.model, key) for key in shape}) == plain.model
    assert plain.optim == replace(shipped.optim, optimizer="adamw")
    assert (plain.data, plain.schedule, plain.runtime) == (shipped.data, shipped.schedule, shipped.runtime)


def test_interpolate_follows_the_line_between_evaluations() -> None:
    curve = (
        EvalPoint(seconds=1.0, iter=0, val_loss=4.0),
        EvalPoint(seconds=3.0, iter=10, val_loss=2.0),
        EvalPoint(seconds=5.0, iter=20, val_loss=1.0),
    )
    assert interpolate(curve, 2.0) == pytest.approx(3.0)
    assert interpolate(curve, 3.0) == pytest.approx(2.0)
    assert interpolate(curve, 4.5) == pytest.approx(1.25)
    assert interpolate(curve, 5.0) == pytest.approx(1.0)
    assert interpolate(curve, 0.5) is None
    assert interpolate(curve, 5.5) is None
    assert interpolate(curve[:1], 1.0) == 4.0


@pytest.mark.slow
def test_tiny_ablation_writes_one_row_per_option_with_its_curve(ctx: BenchContext, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "stale" / "logs" / "tb").mkdir(parents=True)  # an earlier bench's row
    rows = case8_ablation(ctx, FAST_CONFIG, logs)
    report = json.loads(write_report(tmp_path / "bench", {"rows": rows}).read_text())
    metrics = {row["variant"]: row["metrics"] for row in report["rows"]}
    variants = [row["variant"] for row in report["rows"]]
    assert (variants[0], variants[-1]) == (BASELINE, BEST)
    assert set(metrics) == {BASELINE, BEST, *OPTIONS}
    assert {row["case"] for row in report["rows"]} == {CASE}
    baseline = metrics[BASELINE]
    settings = {**baseline["model"], **baseline["optim"]}
    for name in OPTIONS:
        row = metrics[name]
        assert _changed({**row["model"], **row["optim"]}, settings) == {name.split("=")[0]}, name
        assert (row["iters"], row["batch_size"], row["block_size"]) == (6, 4, 16)  # the baseline's token budget
        assert row["final_val_vs_baseline"] == pytest.approx(row["final_val_loss"] - baseline["final_val_loss"])
        assert row["time_vs_baseline"] > 0
    for name, row in metrics.items():
        curve = row["curve"]
        assert [point["iter"] for point in curve] == [3, 6], name
        assert [point["seconds"] for point in curve] == sorted(point["seconds"] for point in curve)
        assert row["final_val_loss"] == curve[-1]["val_loss"]
        assert row["equal_time_seconds"] == min(other["curve"][-1]["seconds"] for other in metrics.values())
        assert row["tokens_per_s"] > 0
    assert metrics[BEST]["optim"]["optimizer"] == "muon"
    assert metrics[BEST]["same_run_as"] is None  # its own run: not the baseline's config
    assert "vs baseline" in rows[1].summary
    # each run's TensorBoard events under one parent, one run per row, with its val/loss
    assert sorted(path.name for path in logs.iterdir()) == sorted(metrics)
    for name in metrics:
        assert [step for step, _ in read_scalars(logs / name / TB_SUBDIR)["val/loss"]] == [3, 6]
