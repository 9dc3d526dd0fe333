"""Progress reporting for long work: a tqdm bar on a terminal, silent when not a TTY or in CI."""

from __future__ import annotations

import os
import sys
from typing import Never

from tqdm import tqdm


def progress_enabled() -> bool:
    """Bars only where a person watches: stderr is a terminal and CI is not set."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(total: float | None, desc: str, unit: str = "it", unit_scale: bool = False) -> tqdm[Never]:
    """A manually updated bar (`bar.update(n)`, no iterable: hence `Never`); use it as a context manager."""
    bar: tqdm[Never] = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        disable=not progress_enabled(),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    return bar
