"""Case 9: start-up, whole 1-iteration training processes at nanoGPT's README CPU shape, ours
(`python -m ml_playground.cli train`) and nanoGPT's train.py alternating; medians compared."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ml_playground.bench.context import BenchContext
from ml_playground.bench.report import Row, StartUp
from ml_playground.bench.timing import alternate, run_process
from ml_playground.bench.train_cases import readme_config
from ml_playground.config import PROJECT_ROOT
from ml_playground.errors import ConfigError

CASE = "9 start-up 1 iter"
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py")
NANOGPT_PREPARE = "data/shakespeare_char/prepare.py"


@dataclass(frozen=True, slots=True, kw_only=True)
class Process:
    """One side's training command, where it runs and where it writes."""

    command: list[str]
    cwd: Path
    out_dir: Path

    def timed(self) -> float:
        """Seconds of one whole run from an empty out_dir."""
        shutil.rmtree(self.out_dir, ignore_errors=True)
        return run_process(self.command, f"{CASE}: {' '.join(self.command[1:3])}", self.cwd)[0]


def ours(ctx: BenchContext) -> Process:
    """`ml-playground train` on nanoGPT's README run for one iteration, written as TOML to the
    scratch folder. Its peak probe stays in: a user's config has no `peak_flops`."""
    cfg = readme_config(ctx, 1)
    out_dir = ctx.work_dir / "case9" / "ours"
    cfg = replace(cfg, runtime=replace(cfg.runtime, out_dir=out_dir, peak_flops=None))
    # [train.model] as its TOML table reads: the keys set (sizes left out follow from them).
    tables = {"model": {key: getattr(cfg.model, key) for key in sorted(cfg.model.model_fields_set)}}
    tables |= {name: asdict(getattr(cfg, name)) for name in ("data", "optim", "schedule", "runtime")}
    text = "".join(  # JSON's numbers, strings and booleans are TOML's too
        f"[train.{name}]\n"
        + "".join(f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}\n" for k, v in t.items() if v is not None)
        for name, t in tables.items()
    )
    config = ctx.work_dir / "case9" / "startup.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")  # scratch input of the bench, read once by the child
    command = [sys.executable, "-m", "ml_playground.cli", "train", "shakespeare_char", "--exp-config", str(config)]
    return Process(command=command, cwd=PROJECT_ROOT, out_dir=out_dir)


def nanogpt(ctx: BenchContext, checkout: Path) -> Process:
    """train.py with the README's CPU flags in a prepared copy of `checkout` (nothing written into it)."""
    copy = ctx.work_dir / "case9" / "nanogpt"
    needed = [*NANOGPT_FILES, NANOGPT_PREPARE]
    if missing := [str(checkout / name) for name in needed if not (checkout / name).is_file()]:
        raise ConfigError(f"--nanogpt-dir: {', '.join(missing)} not found (case 9 runs nanoGPT's train.py)")
    for name in needed:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(checkout / name, copy / name)
    shutil.copy(ctx.corpus, (copy / NANOGPT_PREPARE).with_name("input.txt"))  # present: prepare.py downloads nothing
    run_process([sys.executable, NANOGPT_PREPARE], f"{CASE}: {NANOGPT_PREPARE}", copy)
    cfg = readme_config(ctx, 1)  # the README's flags, as our side's config holds them
    flags = {"device": "cpu", "compile": False, "batch_size": cfg.data.batch_size}
    flags |= {key: getattr(cfg.runtime, key) for key in ("eval_iters", "log_interval", "max_iters")}
    flags |= {key: getattr(cfg.model, key) for key in ("block_size", "n_layer", "n_head", "n_embd", "dropout")}
    flags["lr_decay_iters"] = cfg.schedule.lr_decay_iters
    args = [f"--{key}={value}" for key, value in flags.items()]
    command = [sys.executable, "train.py", "config/train_shakespeare_char.py", *args]
    return Process(command=command, cwd=copy, out_dir=copy / "out-shakespeare-char")


def _row(variant: str, seconds: list[float], baseline: float | None) -> Row:
    median = statistics.median(seconds)
    metrics = StartUp(seconds=median, runs=len(seconds), seconds_per_run=tuple(seconds))
    summary = f"{median:6.2f} s (median of {len(seconds)}: {', '.join(f'{s:.2f}' for s in seconds)})"
    if baseline is not None:
        metrics = replace(metrics, vs_nanogpt=median / baseline, minus_nanogpt=median - baseline)
        summary += f"  {median / baseline:.2f}x nanoGPT ({median - baseline:+.2f} s)"
    return Row(case=CASE, variant=variant, summary=summary, metrics=metrics)


def case9_startup(ctx: BenchContext, runs: int) -> list[Row]:
    """`runs` whole processes per side, alternating; medians and their ratio."""
    theirs = None if ctx.nanogpt is None else nanogpt(ctx, ctx.nanogpt.checkout)
    ours_seconds, theirs_seconds = alternate(ours(ctx).timed, None if theirs is None else theirs.timed, runs)
    if not theirs_seconds:
        return [_row("ml-playground train", ours_seconds, None)]
    baseline = statistics.median(theirs_seconds)
    return [_row("ml-playground train", ours_seconds, baseline), _row("nanoGPT train.py", theirs_seconds, None)]
