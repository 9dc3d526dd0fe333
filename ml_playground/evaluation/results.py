"""Where an evaluation's numbers go: out_dir/eval/<step>.json (lm-eval's result plus the run's
step, config hash and checkpoint, written atomically: a killed evaluation leaves no partial
file), the printed table, and TensorBoard scalars at the checkpoint's step."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ml_playground.atomic import write_text_atomic
from ml_playground.errors import MLPlaygroundError, os_reason

EVAL_DIR = "eval"


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of the run's config as the checkpoint stores it (keys sorted)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def provenance(step: int, config: dict[str, Any], checkpoint: Path | None) -> dict[str, Any]:
    """What the record adds to lm-eval's result; `checkpoint` None: the model of a running training."""
    return {
        "step": step,
        "config_sha256": config_sha256(config),
        "checkpoint": None if checkpoint is None else str(checkpoint),
    }


def _plain(value: object) -> object:
    # lm-eval's own fallback for what json cannot write (numpy numbers, sets, callables in configs).
    from lm_eval import utils

    plain = cast("Callable[[object], object]", utils.handle_non_serializable)
    return plain(value)


def write_results(out_dir: Path, step: int, record: dict[str, Any]) -> Path:
    """out_dir/eval/<step>.json, atomically."""
    path = out_dir / EVAL_DIR / f"{step}.json"
    text = json.dumps(record, indent=2, ensure_ascii=False, default=_plain) + "\n"
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise MLPlaygroundError(f"{path}: cannot write the evaluation's results ({os_reason(exc)})") from None
    return path
