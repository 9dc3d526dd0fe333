"""Validation loss against wall time as an SVG line chart, drawn from a bench JSON report.

Lines: the ablation's baseline (case 8), nanoGPT's README run (case 3, with a checkout) and the
best config (case 3's ml-playground side, else case 8's best row); the first run of each side when
case 3 ran several. The SVG is written as text: axes, ticks, a legend and the 1.88 threshold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from ml_playground.atomic import write_text_atomic
from ml_playground.bench import ablation_case, quality_case
from ml_playground.errors import DataError

CHART_NAME = "loss_vs_time.svg"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")

WIDTH, HEIGHT = 760, 460
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 44, 56
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


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


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Ticks at 1, 2 or 5 times a power of ten that cover [low, high] in about `count` steps."""
    if high <= low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _label(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Axes:
    x_ticks: list[float]
    y_ticks: list[float]

    def x(self, seconds: float) -> float:
        lo, hi = self.x_ticks[0], self.x_ticks[-1]
        return LEFT + (seconds - lo) / (hi - lo) * PLOT_W

    def y(self, loss: float) -> float:
        lo, hi = self.y_ticks[0], self.y_ticks[-1]
        return TOP + (hi - loss) / (hi - lo) * PLOT_H


def axes_for(series: list[Series], threshold: float) -> _Axes:
    """x from 0 to the longest run; y from the lowest loss (or the threshold) up to the highest loss
    after each run's first evaluation: the first evaluation (the untrained model, ~ln(vocabulary))
    would squeeze the part worth reading, so the lines leave the plot at the top there."""
    seconds = [s for line in series for s, _ in line.points]
    losses = [loss for line in series for _, loss in line.points]
    later = [loss for line in series for _, loss in (line.points[1:] or line.points)]
    return _Axes(
        x_ticks=nice_ticks(0.0, max(seconds)),
        y_ticks=nice_ticks(min([*losses, threshold]), max([*later, threshold])),
    )


def _grid(axes: _Axes) -> list[str]:
    parts: list[str] = []
    bottom = TOP + PLOT_H
    for tick in axes.x_ticks:
        x = axes.x(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}" stroke="#e5e5e5"/>')
        label = _label(tick, axes.x_ticks)
        parts.append(f'<text x="{x:.1f}" y="{bottom + 18}" text-anchor="middle">{label}</text>')
    for tick in axes.y_ticks:
        y = axes.y(tick)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        label = _label(tick, axes.y_ticks)
        parts.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#333"/>')
    parts.append(f'<text x="{LEFT + PLOT_W / 2:.1f}" y="{HEIGHT - 12}" text-anchor="middle">wall time (s)</text>')
    middle = TOP + PLOT_H / 2
    parts.append(
        f'<text x="16" y="{middle:.1f}" text-anchor="middle" transform="rotate(-90 16 {middle:.1f})">'
        "validation loss</text>"
    )
    return parts


def _lines(series: list[Series], axes: _Axes, threshold: float) -> list[str]:
    y = axes.y(threshold)
    parts = [
        f'<line class="threshold" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" '
        'stroke="#555" stroke-dasharray="6 4"/>'
    ]
    for line, color in zip(series, COLORS, strict=False):
        points = " ".join(f"{axes.x(s):.2f},{axes.y(loss):.2f}" for s, loss in line.points)
        parts.append(
            f'<polyline data-series={quoteattr(line.name)} points="{points}" fill="none" stroke="{color}" '
            'stroke-width="2" clip-path="url(#plot)"/>'
        )
        for s, loss in line.points:
            cx, cy = axes.x(s), axes.y(loss)
            parts.append(f'<circle cx="{cx:.2f}" cy="{cy:.2f}" r="2.5" fill="{color}" clip-path="url(#plot)"/>')
    return parts


def _legend(series: list[Series], threshold: float) -> list[str]:
    entries = [(line.name, color, "") for line, color in zip(series, COLORS, strict=False)]
    entries.append((f"val loss {threshold:g}", "#555", ' stroke-dasharray="6 4"'))
    width = 24 + 7 * max(len(name) for name, _, _ in entries)
    x0, y0 = LEFT + PLOT_W - width - 8, TOP + 8
    parts = [
        f'<rect x="{x0}" y="{y0}" width="{width}" height="{8 + 18 * len(entries)}" fill="white" '
        'fill-opacity="0.9" stroke="#ccc"/>'
    ]
    for i, (name, color, dash) in enumerate(entries):
        y = y0 + 16 + 18 * i
        parts.append(
            f'<line x1="{x0 + 6}" y1="{y - 4}" x2="{x0 + 24}" y2="{y - 4}" stroke="{color}" stroke-width="2"{dash}/>'
        )
        parts.append(f'<text class="legend" x="{x0 + 30}" y="{y}">{escape(name)}</text>')
    return parts


def render_svg(series: list[Series], threshold: float = quality_case.QUALITY_THRESHOLD) -> str:
    """The chart as SVG text; `series` must hold at least one point."""
    axes = axes_for(series, threshold)
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<clipPath id="plot"><rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/></clipPath>',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2:.0f}" y="26" text-anchor="middle" font-size="15">validation loss vs wall time (s)</text>',
    ]
    body = [*_grid(axes), *_lines(series, axes, threshold), *_legend(series, threshold)]
    return "\n".join([*head, *body, "</svg>"]) + "\n"


def write_chart(series: list[Series], svg_path: Path) -> Path:
    write_text_atomic(svg_path, render_svg(series))
    return svg_path


def render_report(report_path: Path, svg_path: Path | None = None) -> Path:
    """`--render`: the chart of a saved report, next to it unless `svg_path` says where."""
    series = read_series(report_path)
    if not series:
        raise DataError(f"{report_path}: no validation-loss curves (cases 3 and 8 record them)")
    return write_chart(series, report_path.parent / CHART_NAME if svg_path is None else svg_path)
