"""Case 9: start-up, a whole 1-iteration training process at nanoGPT's README CPU shape.

Ours is `python -m ml_playground.cli train` (what `make train` runs) with a config of that shape
written to the scratch folder, on the benchmark's char-level dataset; nanoGPT's is its train.py
with the README's CPU command and `--max_iters=1`, in a copy of the checkout whose own
data/shakespeare_char/prepare.py has prepared the same corpus. Datasets are prepared before any
clock starts; each run starts from an empty out_dir. The processes alternate (ours, nanoGPT,
nanoGPT, ours, ...), `--startup-runs` per side, and their medians are compared.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ml_playground.bench.context import BenchContext
from ml_playground.bench.report import Row, StartUp
from ml_playground.bench.timing import alternate
from ml_playground.config import PROJECT_ROOT
from ml_playground.errors import ConfigError, DataError

CASE = "9 start-up 1 iter"
# [train] of nanoGPT's README CPU run (config/train_shakespeare_char.py with the README's flags).
CONFIG = """\
[train.model]
n_layer = {n_layer}
n_head = {n_head}
n_embd = {n_embd}
block_size = {block_size}
dropout = 0.0
bias = false

[train.data]
dataset_dir = "{dataset_dir}"
batch_size = {batch_size}
block_size = {block_size}

[train.optim]
learning_rate = 1e-3
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0

[train.schedule]
warmup_iters = 100
lr_decay_iters = 2000
min_lr = 1e-4

[train.runtime]
out_dir = "{out_dir}"
max_iters = 1
eval_interval = 250
eval_iters = {eval_iters}
log_interval = 1
device = "cpu"
dtype = "float32"
"""
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
    """`ml-playground train` on a config of the README's shape, and the run's out_dir."""
    shape, out_dir = ctx.sizes.small, ctx.work_dir / "case9" / "ours"
    config = ctx.work_dir / "case9" / "startup.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    text = CONFIG.format(
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        block_size=shape.block_size,
        batch_size=ctx.sizes.small_batch,
        eval_iters=2 if ctx.tiny else 20,
        dataset_dir=ctx.char_dir,
        out_dir=out_dir,
    )
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
