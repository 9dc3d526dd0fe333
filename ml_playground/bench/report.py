"""Result rows, the console table and the JSON report."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ml_playground.atomic import write_text_atomic

Value = float | int | str | bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One measured variant of one case."""

    case: str
    variant: str
    summary: str  # the table cell
    metrics: dict[str, Value] = field(default_factory=dict[str, Value])


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; otherwise what platform knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Value]:
    info: dict[str, Value] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_table(rows: list[Row]) -> str:
    headers = ("case", "variant", "result")
    cells = [headers, *((row.case, row.variant, row.summary) for row in rows)]
    widths = [max(len(cell[i]) for cell in cells) for i in range(2)]
    lines = [f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]}" for c in cells]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """out_dir/bench_<UTC stamp>.json, and latest.json with the same content."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
    path = out_dir / f"bench_{stamp}.json"
    write_text_atomic(path, text)
    write_text_atomic(out_dir / "latest.json", text)
    return path


def row_dict(row: Row) -> dict[str, Any]:
    return {"case": row.case, "variant": row.variant, "summary": row.summary, "metrics": row.metrics}


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: such floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, list):
        return [_finite(item) for item in value]  # pyright: ignore[reportUnknownVariableType]
    return value
