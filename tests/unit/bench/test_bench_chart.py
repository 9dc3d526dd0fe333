"""The val-loss-vs-time chart drawn from a hand-made bench report: valid SVG, one line per series in
run order, a legend, the 1.88 threshold; `--render` from a saved report."""

from __future__ import annotations

import itertools
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ml_playground.bench import ablation_case, quality_case
from ml_playground.bench.chart import CHART_NAME, nice_ticks, read_series, render_report
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


def _polylines(svg: Path) -> dict[str, list[tuple[float, float]]]:
    root = ET.parse(svg).getroot()  # valid XML, or this raises
    assert root.tag == f"{SVG}svg"
    lines: dict[str, list[tuple[float, float]]] = {}
    for line in root.iter(f"{SVG}polyline"):
        xy = [tuple(float(v) for v in pair.split(",")) for pair in line.attrib["points"].split()]
        lines[line.attrib["data-series"]] = [(x, y) for x, y in xy]
    return lines


def test_chart_has_one_line_per_series_in_run_order_a_legend_and_the_threshold(tmp_path: Path) -> None:
    svg = render_report(_write(tmp_path, REPORT), tmp_path / "chart.svg")
    lines = _polylines(svg)
    assert list(lines) == NAMES  # case 3's first run for nanoGPT and the best config; the ablation's baseline
    for name, curve in zip(NAMES, (BASELINE, NANOGPT, BEST), strict=True):
        xs, ys = [x for x, _ in lines[name]], [y for _, y in lines[name]]
        assert len(xs) == len(curve)
        assert xs == sorted(xs)
        assert len(set(xs)) == len(xs)
        assert ys == sorted(ys)  # these losses only fall: each point lower on the chart (SVG y grows downwards)
    # one x scale for all lines: the same second lands at the same x
    assert lines[NAMES[0]][0][0] == lines[NAMES[2]][0][0]
    assert lines[NAMES[1]][-1][0] > lines[NAMES[0]][-1][0] > lines[NAMES[2]][-1][0]
    root = ET.parse(svg).getroot()
    texts = [text.text for text in root.iter(f"{SVG}text")]
    assert "validation loss vs wall time (s)" in texts
    assert "wall time (s)" in texts
    assert "validation loss" in texts
    legend = [text.text for text in root.iter(f"{SVG}text") if text.attrib.get("class") == "legend"]
    assert legend == [*NAMES, "val loss 1.88"]
    (threshold,) = [line for line in root.iter(f"{SVG}line") if line.attrib.get("class") == "threshold"]
    assert "stroke-dasharray" in threshold.attrib
    best = lines[NAMES[2]]
    assert best[2][1] < float(threshold.attrib["y1"]) < best[3][1]  # between the evaluations at 1.9 and 1.85


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
    assert list(_polylines(tmp_path / CHART_NAME)) == NAMES
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


@pytest.mark.parametrize(("low", "high"), [(0.0, 33.0), (1.84, 2.4), (0.0, 0.4), (1.88, 1.88), (0.0, 120.0)])
def test_ticks_are_round_steps_that_cover_the_range(low: float, high: float) -> None:
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low
    assert ticks[-1] >= high
    assert 2 <= len(ticks) <= 13
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    (step,) = steps
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in {1.0, 2.0, 5.0}
