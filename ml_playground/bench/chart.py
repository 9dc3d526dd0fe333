"""Validation loss against wall time as an SVG line chart (matplotlib), drawn from a bench JSON report.

Lines: the ablation's baseline (case 8), nanoGPT's README run (case 3, with a checkout) and the
best config (case 3's ml-playground side, else case 8's best row); the first run of each side when
case 3 ran several; the 1.88 threshold dashed. Text stays text in the SVG and the file carries no
date or random ids, so the same report draws the same bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_playground.atomic import write_text_atomic
from ml_playground.bench import ablation_case, quality_case
from ml_playground.errors import DataError

CHART_NAME = "loss_vs_time.svg"


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    name: str
    points: tuple[tuple[float, float], ...]  # (seconds since the run started, val loss), in run order


def _points(curve: Sequence[Any]) -> tuple[tuple[float, float], ...]:
    return tuple((float(point["seconds"]), float(point["val_loss"])) for point in curve)


def report_series(report: dict[str, Any]) -> list[Series]:
    """The report's baseline, nanoGPT and best-config curves, those it has, in that order."""
    rows: list[dict[str, Any]] = report.get("rows", [])
    ablation = {row["variant"]: row["metrics"] for row in rows if row["case"] == ablation_case.CASE}
    quality = [row for row in rows if row["case"] == quality_case.CASE]
    series: list[Series] = []
    if ablation_case.BASELINE in ablation:
        baseline = ablation[ablation_case.BASELINE]
        name = f"baseline: GPT-2 + AdamW ({Path(baseline['config']).name})"
        series.append(Series(name=name, points=_points(baseline["curve"])))
    for row in quality:
        if row["variant"] == quality_case.NANOGPT_VARIANT and row["metrics"]["curves"]:
            series.append(Series(name="nanoGPT README run", points=_points(row["metrics"]["curves"][0])))
    ours = [row["metrics"] for row in quality if row["metrics"].get("config") and row["metrics"]["curves"]]
    if ours:
        series.append(Series(name=f"best: {Path(ours[0]['config']).name}", points=_points(ours[0]["curves"][0])))
    elif ablation_case.BEST in ablation:
        best = ablation[ablation_case.BEST]
        series.append(Series(name=f"best: {Path(best['config']).name}", points=_points(best["curve"])))
    return [line for line in series if line.points]


def read_series(report_path: Path) -> list[Series]:
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{report_path}: bench report not found (make bench writes out/bench/latest.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{report_path}: not a bench JSON report ({exc})") from None
    try:
        return report_series(report)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{report_path}: not a bench JSON report (unexpected layout: {exc!r})") from None


def render_svg(series: list[Series], threshold: float = quality_case.QUALITY_THRESHOLD) -> str:
    """The chart as SVG text; `series` must hold at least one point.

    y runs from the lowest loss (or the threshold) up to the highest loss after each run's first
    evaluation: the first (the untrained model, ~ln(vocabulary)) would squeeze the part worth
    reading, so the lines leave the plot at the top there."""
    # Imported here: matplotlib is the bench group's, and only the chart needs it.
    import matplotlib as mpl
    from matplotlib.figure import Figure

    losses = [loss for line in series for _, loss in line.points]
    later = [loss for line in series for _, loss in (line.points[1:] or line.points)]
    low, high = min([*losses, threshold]), max([*later, threshold])
    margin = 0.05 * (high - low) or 0.5
    # Text as <text> (not glyph paths), fixed ids, no date: the same report draws the same bytes.
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ml-playground", "font.size": 9}):
        figure = Figure(figsize=(7.6, 4.6))
        axes = figure.add_subplot()
        for line in series:
            seconds, values = zip(*line.points, strict=True)
            axes.plot(seconds, values, marker="o", markersize=3, linewidth=1.5, label=line.name)
        axes.axhline(threshold, color="#555555", linestyle="--", linewidth=1, label=f"val loss {threshold:g}")
        axes.set(xlim=(0, None), ylim=(low - margin, high + margin), xlabel="wall time (s)", ylabel="validation loss")
        axes.set_title("validation loss vs wall time (s)")
        axes.grid(color="#e5e5e5")
        axes.legend(loc="upper right")
        figure.tight_layout()
        text = io.StringIO()
        figure.savefig(text, format="svg", metadata={"Date": None})
    return text.getvalue()


def write_chart(series: list[Series], svg_path: Path) -> Path:
    write_text_atomic(svg_path, render_svg(series))
    return svg_path


def render_report(report_path: Path, svg_path: Path | None = None) -> Path:
    """`--render`: the chart of a saved report, next to it unless `svg_path` says where."""
    series = read_series(report_path)
    if not series:
        raise DataError(f"{report_path}: no validation-loss curves (cases 3 and 8 record them)")
    return write_chart(series, report_path.parent / CHART_NAME if svg_path is None else svg_path)
