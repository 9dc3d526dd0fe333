"""Tasks and text through lm-evaluation-harness: which tasks a config names, each run by lm-eval's
own `simple_evaluate` on our model, merged into one result in lm-eval's format, and a text file's
bits per byte.

A task is an lm-eval task, group or tag name (its dataset comes from the Hugging Face hub, so it
needs the network once; `datasets` caches it) or a task YAML file (`.yaml`/`.yml`, relative paths
from the project root). Tasks are loaded before the model, so a bad name or file fails at once,
naming the task; each is then evaluated on its own, so a failing task is attributable.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from lm_eval import evaluator
from lm_eval.tasks import TaskManager

from ml_playground.config import EvalSettings, project_path
from ml_playground.config_loader import read_named_text
from ml_playground.errors import ConfigError, DataError, MLPlaygroundError, summary
from ml_playground.evaluation.lm import BitsPerByte, PlaygroundLM, bits_per_byte

log = logging.getLogger(__name__)

YAML_SUFFIXES = (".yaml", ".yml")
# Keys of lm-eval's result that hold one entry per task; the others describe the run.
PER_TASK_KEYS = (
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
)
# Bootstrap resamples for the stderr of metrics without a closed form (perplexities, bits per
# byte); lm-eval's default of 100000 takes minutes on a CPU.
BOOTSTRAP_ITERS = 1000

# lm-eval's entry points as this module calls them (their own annotations are incomplete).
simple_evaluate = cast("Callable[..., dict[str, Any] | None]", evaluator.simple_evaluate)


@dataclass(frozen=True, slots=True)
class Plan:
    """Loaded tasks (by the spec the config gives) and the text to measure."""

    manager: TaskManager | None
    tasks: tuple[str, ...]
    text: Path | None


def task_spec(spec: str, key: str) -> str:
    """A task name as it is, a YAML file as its absolute path (which must exist)."""
    if not spec.endswith(YAML_SUFFIXES):
        return spec
    path = project_path(spec)
    if not path.is_file():
        raise ConfigError(f"{key}.tasks: task file {path} not found")
    return str(path)


def load_task(manager: TaskManager, spec: str, key: str) -> None:
    """Build the task (its dataset read or downloaded) once, turning lm-eval's failures into one line."""
    is_file = spec.endswith(YAML_SUFFIXES)
    try:
        manager.load([spec])
    except yaml.YAMLError as exc:
        raise ConfigError(f"{spec}: task YAML does not parse ({summary(exc)})") from None
    except KeyError:
        if is_file:
            raise ConfigError(f"{spec}: not a task YAML (no task or group key)") from None
        raise ConfigError(
            f"{key}.tasks: unknown task {spec!r}: not an lm-eval task, group or tag, nor a .yaml file "
            "(`uv run lm-eval ls tasks` lists them)"
        ) from None
    except OSError as exc:
        if is_file:
            raise DataError(f"{spec}: cannot read the task's data ({summary(exc)})") from None
        raise DataError(
            f"{key}.tasks: task {spec!r} needs a download from the Hugging Face hub, which failed "
            f"({summary(exc)}); connect to the network once (datasets caches it) or use a local task YAML"
        ) from None
    except Exception as exc:  # lm-eval checks a task's config with plain exceptions of many kinds
        if not is_file:
            raise
        raise ConfigError(f"{spec}: invalid task ({summary(exc)})") from None


@functools.cache
def task_manager(*, include_defaults: bool) -> TaskManager:
    """lm-eval's task index, built once per process (a training run evaluates many times)."""
    return TaskManager(include_defaults=include_defaults)


def plan(settings: EvalSettings, key: str) -> Plan:
    """Check and load everything the settings name (`key`: their table, for errors)."""
    specs = tuple(task_spec(spec, key) for spec in settings.tasks)
    manager = None
    if specs:
        # Indexing lm-eval's ~15000 bundled task files takes seconds: only when a name needs it.
        manager = task_manager(include_defaults=any(not spec.endswith(YAML_SUFFIXES) for spec in specs))
        for spec in specs:
            load_task(manager, spec, key)
    if settings.text is not None and not settings.text.is_file():
        raise ConfigError(f"{key}.text: {settings.text} not found")
    return Plan(manager=manager, tasks=specs, text=settings.text)


def evaluate_task(lm: PlaygroundLM, plan: Plan, spec: str, settings: EvalSettings) -> dict[str, Any]:
    """lm-eval's result for one task (or group) on `lm`."""
    try:
        result: dict[str, Any] | None = simple_evaluate(
            model=lm,
            tasks=[spec],
            num_fewshot=settings.num_fewshot,
            limit=settings.limit,
            task_manager=plan.manager,
            log_samples=False,
            bootstrap_iters=BOOTSTRAP_ITERS,
        )
    except MLPlaygroundError as exc:
        raise type(exc)(f"task {spec}: {exc}") from None
    if result is None:
        raise MLPlaygroundError(f"task {spec}: lm-eval returned no result")
    return result


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One lm-eval result from several: per-task sections joined, the run's description the first's."""
    merged: dict[str, Any] = dict(results[0]) if results else {}
    for key in PER_TASK_KEYS:
        joined: dict[str, Any] = {}
        for result in results:
            joined.update(result.get(key, {}))
        if joined or key == "results":
            merged[key] = joined
    return merged


def measure_text(lm: PlaygroundLM, path: Path, key: str) -> dict[str, Any]:
    """The text's bits per byte, as the results file records it."""
    measured: BitsPerByte = bits_per_byte(lm, read_named_text(path, f"{key}.text:"))
    return {
        "text": str(path),
        "bits_per_byte": measured.bits_per_byte,
        "nats": measured.nats,
        "tokens": measured.tokens,
        "bytes": measured.bytes,
    }


def evaluate(lm: PlaygroundLM, plan: Plan, settings: EvalSettings, key: str) -> dict[str, Any]:
    """Every task and the text; the first failure stops it."""
    record = merge([evaluate_task(lm, plan, spec, settings) for spec in plan.tasks])
    if plan.text is not None:
        record["bits_per_byte"] = measure_text(lm, plan.text, key)
    return record


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard tags `eval/<task>/<metric>` (lm-eval's filter appended unless "none"), stderr left out."""
    values: dict[str, float] = {}
    for task, metrics in record.get("results", {}).items():
        for name, value in metrics.items():
            metric, _, kind = name.partition(",")
            if not kind or metric.endswith("_stderr") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                suffix = "" if kind == "none" else f"_{kind}"
                values[f"eval/{task}/{metric}{suffix}"] = float(value)
    if "bits_per_byte" in record:
        values["eval/text/bits_per_byte"] = float(record["bits_per_byte"]["bits_per_byte"])
    return values


def table(record: dict[str, Any]) -> str:
    """A Markdown table of every task's metrics (lm-eval's columns), and the text's bits per byte.
    (lm-eval's own `make_table` loses its header row with pytablewriter 0.38.)"""
    rows = [["Task", "Filter", "n-shot", "Metric", "Value", "Stderr"]]
    for task, metrics in record.get("results", {}).items():
        for name, value in sorted(metrics.items()):
            metric, _, kind = name.partition(",")
            if not kind or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            stderr = metrics.get(f"{metric}_stderr,{kind}", "")
            cells = [task, kind, str(record.get("n-shot", {}).get(task, "")), metric, f"{value:.4f}"]
            rows.append([*cells, f"{stderr:.4f}" if isinstance(stderr, float) else str(stderr)])
    lines: list[str] = []
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |" for row in rows
        ]
        lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    if "bits_per_byte" in record:
        measured = record["bits_per_byte"]
        lines.append(
            f"{measured['text']}: {measured['bits_per_byte']:.4f} bits per byte "
            f"({measured['tokens']} tokens, {measured['bytes']} bytes)"
        )
    return "".join(line + "\n" for line in lines)
