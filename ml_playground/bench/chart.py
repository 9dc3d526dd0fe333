"""Validation loss against wall time as an SVG line chart (matplotlib), drawn from a bench JSON report."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, NamedTuple

from ml_playground.atomic import write_text_atomic
from ml_playground.bench import ablation_case, quality_case
from ml_playground.errors import DataError

CHART_NAME = "loss_vs_time.svg"


class Series(NamedTuple):
    name: str
    points: tuple[tuple[float, float], ...]  # (seconds since the run started, val loss), in run order


def report_series(report: dict[str, Any]) -> list[Series]:
    """The report's baseline, nanoGPT and best-config curves, those it has, in that order."""
    rows: list[dict[str, Any]] = report.get("rows", [])
    ablation = {row["variant"]: row["metrics"] for row in rows if row["case"] == ablation_case.CASE}
    quality = {row["variant"]: row["metrics"] for row in rows if row["case"] == quality_case.CASE}
    curves: list[tuple[str, list[dict[str, Any]]]] = []
    if baseline := ablation.get(ablation_case.BASELINE):
        curves.append((f"baseline: GPT-2 + AdamW ({Path(baseline['config']).name})", baseline["curve"]))
    if (nanogpt := quality.get(quality_case.NANOGPT_VARIANT)) and nanogpt["curves"]:
        curves.append(("nanoGPT README run", nanogpt["curves"][0]))
    if ours := [metrics for metrics in quality.values() if metrics.get("config") and metrics["curves"]]:
        curves.append((f"best: {Path(ours[0]['config']).name}", ours[0]["curves"][0]))
    elif best := ablation.get(ablation_case.BEST):
        curves.append((f"best: {Path(best['config']).name}", best["curve"]))
    series = [Series(name, tuple((float(p["seconds"]), float(p["val_loss"])) for p in curve)) for name, curve in curves]
    return [line for line in series if line.points]


def read_series(report_path: Path) -> list[Series]:
    try:
        return report_series(json.loads(report_path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise DataError(f"{report_path}: bench report not found (make bench writes out/bench/latest.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{report_path}: not a bench JSON report ({exc})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{report_path}: not a bench JSON report (unexpected layout: {exc!r})") from None


def render_svg(series: list[Series], threshold: float = quality_case.QUALITY_THRESHOLD) -> str:
    """The chart as SVG text. y runs up to the highest loss after each run's first evaluation: the
    first (the untrained model, ~ln(vocabulary)) would squeeze the part worth reading."""
    # Imported here: matplotlib is the bench group's, and only the chart needs it.
    import matplotlib as mpl
    from matplotlib.figure import Figure

    losses = [loss for _, points in series for _, loss in points]
    later = [loss for _, points in series for _, loss in (points[1:] or points)]
    low, high = min([*losses, threshold]), max([*later, threshold])
    margin = 0.05 * (high - low) or 0.5
    # Text as <text> (not glyph paths), fixed ids, no date: the same report draws the same bytes.
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ml-playground", "font.size": 9}):
        figure = Figure(figsize=(7.6, 4.6))
        axes = figure.add_subplot()
        for name, points in series:
            axes.plot(*zip(*points, strict=True), marker="o", markersize=3, linewidth=1.5, label=name)
        axes.axhline(threshold, color="#555555", linestyle="--", linewidth=1, label=f"val loss {threshold:g}")
        axes.set(xlim=(0, None), ylim=(low - margin, high + margin), xlabel="wall time (s)", ylabel="validation loss")
        axes.set_title("validation loss vs wall time (s)")
        axes.grid(color="#e5e5e5")
        axes.legend(loc="upper right")
        figure.tight_layout()
        text = io.StringIO()
        figure.savefig(text, format="svg", metadata={"Date": None})
    return text.getvalue()


def render_report(report_path: Path, svg_path: Path | None = None) -> Path:
    """`--render`: the chart of a saved report, next to it unless `svg_path` says where."""
    if not (series := read_series(report_path)):
        raise DataError(f"{report_path}: no validation-loss curves (cases 3 and 8 record them)")
    svg_path = report_path.parent / CHART_NAME if svg_path is None else svg_path
    write_text_atomic(svg_path, render_svg(series))
    return svg_path
