"""Case 9: start-up, a whole 1-iteration training process at nanoGPT's README CPU shape.

Ours is `python -m ml_playground.cli train` (what `make train` runs) with a config of that shape
written to the scratch folder, on the benchmark's char-level dataset; nanoGPT's is its train.py
with the README's CPU command and `--max_iters=1`, in a copy of the checkout whose own
data/shakespeare_char/prepare.py has prepared the same corpus. Datasets are prepared before any
clock starts; each run starts from an empty out_dir. The processes alternate (ours, nanoGPT,
nanoGPT, ours, ...), `--startup-runs` per side, and their medians are compared.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ml_playground.bench.context import BenchContext
from ml_playground.bench.report import Row, StartUp
from ml_playground.bench.runs import train_config
from ml_playground.bench.timing import alternate
from ml_playground.config import PROJECT_ROOT
from ml_playground.errors import ConfigError, DataError

CASE = "9 start-up 1 iter"
NANOGPT_DATA = Path("data") / "shakespeare_char"


@dataclass(frozen=True, slots=True, kw_only=True)
class Process:
    """One side's training command, where it runs and where it writes."""

    command: list[str]
    cwd: Path
    out_dir: Path

    def timed(self) -> float:
        """Seconds of one whole run from an empty out_dir; a failed run stops the bench in one line."""
        shutil.rmtree(self.out_dir, ignore_errors=True)
        started = time.perf_counter()
        done = subprocess.run(self.command, cwd=self.cwd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"{CASE}: {' '.join(self.command[1:3])} exited {done.returncode}: {last}")
        return seconds


def ours(ctx: BenchContext) -> Process:
    """`ml-playground train` on case 1's config (train_shakespeare_char's settings at the README's
    shape) for one iteration as the README runs it, written as TOML to the scratch folder. Its
    peak probe stays in: a user's config has no `peak_flops`."""
    cfg = train_config(ctx, ctx.sizes.small, ctx.sizes.small_batch)
    out_dir = ctx.work_dir / "case9" / "ours"
    eval_iters = 2 if ctx.tiny else 20
    runtime = replace(cfg.runtime, out_dir=out_dir, max_iters=1, eval_interval=250, eval_iters=eval_iters)
    cfg = replace(cfg, runtime=replace(runtime, log_interval=1, peak_flops=None))
    # [train.model] as its TOML table reads: the keys set (sizes left out follow from them).
    tables = {"model": {key: getattr(cfg.model, key) for key in sorted(cfg.model.model_fields_set)}}
    tables |= {name: asdict(getattr(cfg, name)) for name in ("data", "optim", "schedule", "runtime")}
    text = ""
    for name, table in tables.items():
        text += f"[train.{name}]\n"
        for key, value in table.items():
            if value is not None:  # JSON's numbers, strings and booleans are TOML's too
                text += f"{key} = {json.dumps(str(value) if isinstance(value, Path) else value)}\n"
    config = ctx.work_dir / "case9" / "startup.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")  # scratch input of the bench, read once by the child
    command = [sys.executable, "-m", "ml_playground.cli", "train", "shakespeare_char", "--exp-config", str(config)]
    return Process(command=command, cwd=PROJECT_ROOT, out_dir=out_dir)


def nanogpt(ctx: BenchContext, checkout: Path) -> Process:
    """train.py with the README's CPU flags in a prepared copy of `checkout` (nothing written into it)."""
    copy = ctx.work_dir / "case9" / "nanogpt"
    needed = [Path("train.py"), Path("model.py"), Path("configurator.py"), Path("config") / "train_shakespeare_char.py"]
    missing = [
        str(checkout / name) for name in [*needed, NANOGPT_DATA / "prepare.py"] if not (checkout / name).is_file()
    ]
    if missing:
        raise ConfigError(f"--nanogpt-dir: {', '.join(missing)} not found (case 9 runs nanoGPT's train.py)")
    for name in [*needed, NANOGPT_DATA / "prepare.py"]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(checkout / name, copy / name)
    shutil.copy(ctx.corpus, copy / NANOGPT_DATA / "input.txt")  # present: prepare.py downloads nothing
    Process(command=[sys.executable, str(NANOGPT_DATA / "prepare.py")], cwd=copy, out_dir=copy / "unused").timed()
    shape = ctx.sizes.small
    flags = {
        "device": "cpu",
        "compile": False,
        "eval_iters": 2 if ctx.tiny else 20,
        "log_interval": 1,
        "block_size": shape.block_size,
        "batch_size": ctx.sizes.small_batch,
        "n_layer": shape.n_layer,
        "n_head": shape.n_head,
        "n_embd": shape.n_embd,
        "max_iters": 1,
        "lr_decay_iters": 2000,
        "dropout": 0.0,
    }
    command = [
        sys.executable,
        "train.py",
        "config/train_shakespeare_char.py",
        *(f"--{k}={v}" for k, v in flags.items()),
    ]
    return Process(command=command, cwd=copy, out_dir=copy / "out-shakespeare-char")


def _row(variant: str, seconds: list[float], baseline: float | None) -> Row:
    median = statistics.median(seconds)
    metrics = StartUp(
        seconds=median,
        runs=len(seconds),
        seconds_per_run=tuple(seconds),
        vs_nanogpt=None if baseline is None else median / baseline,
        minus_nanogpt=None if baseline is None else median - baseline,
    )
    summary = f"{median:6.2f} s (median of {len(seconds)}: {', '.join(f'{s:.2f}' for s in seconds)})"
    if baseline is not None:
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
