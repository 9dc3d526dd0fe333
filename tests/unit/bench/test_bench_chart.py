"""The val-loss-vs-time chart drawn from a hand-made bench report: valid SVG naming each series in run
order, the axes and the 1.88 threshold, the same bytes each time; `--render` from a saved report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ml_playground.bench import ablation_case, quality_case
from ml_playground.bench.chart import CHART_NAME, read_series, render_report
from ml_playground.bench.runner import main
from ml_playground.errors import DataError

SVG = "{http://www.w3.org/2000/svg}"


def _curve(*points: tuple[float, float]) -> list[dict[str, Any]]:
    return [{"seconds": s, "iter": 100 * i, "val_loss": loss} for i, (s, loss) in enumerate(points)]


def _row(case: str, variant: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"case": case, "variant": variant, "summary": "", "metrics": metrics}


BASELINE = _curve((1.0, 4.2), (10.0, 2.4), (20.0, 2.0), (33.0, 1.86))
NANOGPT = _curve((0.5, 4.2), (30.0, 2.3), (60.0, 2.0), (100.0, 1.884))
BEST = _curve((1.0, 4.2), (8.0, 2.2), (16.0, 1.9), (22.0, 1.85))
REPORT = {
    "rows": [
        _row("1 train", "ml-playground fp32", {"tokens_per_s": 1.0}),
        _row(quality_case.CASE, "ml-playground muon.toml", {"config": "/x/muon.toml", "curves": [BEST, NANOGPT]}),
        _row(quality_case.CASE, quality_case.NANOGPT_VARIANT, {"config": None, "curves": [NANOGPT]}),
        _row(ablation_case.CASE, ablation_case.BASELINE, {"config": "/x/base.toml", "curve": BASELINE}),
        _row(ablation_case.CASE, "qk_norm=true", {"config": "/x/base.toml", "curve": NANOGPT}),
        _row(ablation_case.CASE, ablation_case.BEST, {"config": "/x/other.toml", "curve": NANOGPT}),
    ]
}
NAMES = ["baseline: GPT-2 + AdamW (base.toml)", "nanoGPT README run", "best: muon.toml"]


def _write(tmp_path: Path, report: dict[str, Any]) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def _texts(svg: Path) -> list[str]:
    """Every text of the chart, in document order (titles, ticks, then the legend)."""
    root = ET.parse(svg).getroot()  # valid XML, or this raises
    assert root.tag == f"{SVG}svg"
    return [text.text or "" for text in root.iter(f"{SVG}text")]


def _legend(svg: Path) -> list[str]:
    texts = _texts(svg)
    return texts[texts.index("validation loss vs wall time (s)") + 1 :]


def test_chart_names_each_series_in_run_order_the_axes_and_the_threshold(tmp_path: Path) -> None:
    svg = render_report(_write(tmp_path, REPORT), tmp_path / "chart.svg")
    texts = _texts(svg)
    assert {"validation loss vs wall time (s)", "wall time (s)", "validation loss"} <= set(texts)
    # case 3's first run for nanoGPT and the best config; the ablation's baseline; the dashed threshold
    assert _legend(svg) == [*NAMES, "val loss 1.88"]
    again = render_report(_write(tmp_path, REPORT), tmp_path / "again.svg")
    assert again.read_bytes() == svg.read_bytes()  # no date, no random ids


def test_without_case_3_the_best_line_is_the_ablations_best_row(tmp_path: Path) -> None:
    ablation_only = {"rows": [row for row in REPORT["rows"] if row["case"] != quality_case.CASE]}
    series = read_series(_write(tmp_path, ablation_only))
    assert [line.name for line in series] == [NAMES[0], "best: other.toml"]
    assert series[1].points == tuple((p["seconds"], p["val_loss"]) for p in NANOGPT)


def test_render_writes_the_chart_beside_the_report_and_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _write(tmp_path, REPORT)
    assert main(["--render", str(report)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / CHART_NAME}"
    assert _legend(tmp_path / CHART_NAME) == [*NAMES, "val loss 1.88"]
    no_curves = _write(tmp_path, {"rows": [REPORT["rows"][0]]})
    assert main(["--render", str(no_curves), "--svg", str(tmp_path / "x.svg")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {no_curves}: no validation-loss curves (cases 3 and 8 record them)"]
    assert not (tmp_path / "x.svg").exists()
    with pytest.raises(DataError, match="bench report not found"):
        read_series(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="not a bench JSON report"):
        read_series(tmp_path / "bad.json")
