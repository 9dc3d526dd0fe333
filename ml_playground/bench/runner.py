"""`make bench [CORPUS=path]`: prints one table, writes the rows, the machine and the measured peaks
as JSON to `<out-dir>/bench_<UTC stamp>.json` (and `latest.json`), and from that JSON the chart of
validation loss against wall time. `--render REPORT.json` draws the chart of a saved report."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ml_playground.bench.ablation_case import case8_ablation
from ml_playground.bench.chart import CHART_NAME, read_series, render_report
from ml_playground.bench.context import FULL, TINY, BenchContext
from ml_playground.bench.gpu_cases import case6_gpu_steps, case7_gpu_run
from ml_playground.bench.nanogpt import load_nanogpt
from ml_playground.bench.prepare_cases import case5_prepare
from ml_playground.bench.quality_case import case3_time_to_quality
from ml_playground.bench.report import Row, format_table, machine_info, write_report
from ml_playground.bench.sample_cases import case4_sampling
from ml_playground.bench.startup_case import case9_startup
from ml_playground.bench.tokenizer_case import case10_tokenizers
from ml_playground.bench.train_cases import case1_train_small, case2_train_mid
from ml_playground.config import PROJECT_ROOT, Device
from ml_playground.data.prepare import prepare_corpus
from ml_playground.errors import ConfigError, MLPlaygroundError
from ml_playground.experiments.shakespeare.corpus import write_bundled_corpus
from ml_playground.runtime import TORCH_DTYPES, resolve_runtime
from ml_playground.train.metrics import measure_peak_flops, probe_bfloat16

ALL_CASES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
GPU_CASES = (6, 7)  # skipped rows on other devices, except in a --tiny smoke run
SETTINGS = ("warmup", "reps", "quality_runs", "startup_runs", "tiny", "compile", "force_bf16")  # in the report
DEFAULT_QUALITY_CONFIG = PROJECT_ROOT / "ml_playground" / "configs" / "shakespeare_char_fast_cpu.toml"


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    corpus: Path | None
    out_dir: Path
    nanogpt_dir: Path | None
    cases: tuple[int, ...]
    warmup: int
    reps: int
    device: Device
    compile: bool
    force_bf16: bool
    tiny: bool
    quality_config: Path
    quality_runs: int
    startup_runs: int
    prepare_mb: float | None
    render: Path | None  # a saved report: draw its chart, run nothing
    svg: Path | None  # where the chart goes (default: beside the JSON report)


def _cases(text: str) -> tuple[int, ...]:
    try:
        cases = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected case numbers like 1,3,4, got {text!r}") from None
    if not cases or not set(cases) <= set(ALL_CASES):
        raise argparse.ArgumentTypeError(f"cases must be among {ALL_CASES}, got {text!r}")
    return cases


def parse_options(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m ml_playground.bench", description=__doc__)
    add = parser.add_argument
    add("--corpus", type=Path, help="text corpus (default: the bundled Shakespeare plays)")
    add("--out-dir", type=Path, default=PROJECT_ROOT / "out" / "bench", help="JSON reports go here")
    add("--nanogpt-dir", type=Path, help="a karpathy/nanoGPT checkout to time side by side")
    add("--cases", type=_cases, help="comma-separated case numbers (default: 1-5, 8-10; 6-7 too with cuda or --tiny)")
    add("--warmup", type=int, default=5, help="untimed warm-up repetitions per variant")
    add("--reps", type=int, default=30, help="timed repetitions per variant (medians reported)")
    add("--device", choices=("cpu", "cuda", "mps"), default="cpu")
    add("--no-compile", dest="compile", action="store_false", help="skip torch.compile variants")
    add("--force-bf16", action="store_true", help="run bf16 variants even where bf16 autocast trains slower")
    add(
        "--quality-config",
        type=Path,
        default=DEFAULT_QUALITY_CONFIG,
        help="case 3's config, case 8's best row, case 10's model",
    )
    add("--quality-runs", type=int, default=2, help="case 3 runs per side, alternating (means reported)")
    add("--startup-runs", type=int, default=5, help="case 9 processes per side, alternating (medians reported)")
    add("--prepare-mb", type=float, help="case 5 input size in MB (default 1024)")
    add("--tiny", action="store_true", help="smoke run: tiny models and inputs (numbers are meaningless)")
    add("--render", type=Path, metavar="REPORT_JSON", help="draw the chart of a saved report and run no case")
    add("--svg", type=Path, help=f"where the val-loss-vs-time chart goes (default: {CHART_NAME} beside the report)")
    args = parser.parse_args(argv)
    if args.warmup < 0 or min(args.reps, args.quality_runs, args.startup_runs) < 1:
        parser.error("--warmup must be >= 0, --reps, --quality-runs and --startup-runs >= 1")
    if args.cases is None:
        gpu = args.device == "cuda" or args.tiny
        args.cases = tuple(case for case in ALL_CASES if gpu or case not in GPU_CASES)
    return Options(**vars(args))


def build_context(options: Options, work_dir: Path) -> BenchContext:
    device = resolve_runtime(options.device, "float32").device
    if (corpus := options.corpus) is None:
        write_bundled_corpus(corpus := work_dir / "bundled.txt")
    elif not corpus.is_file():
        raise ConfigError(f"--corpus: {corpus} is not a file")
    char_dir = work_dir / "char"
    sizes = TINY if options.tiny else FULL
    return BenchContext(
        device_name=options.device,
        device=device,
        sizes=sizes if options.prepare_mb is None else replace(sizes, prepare_mb=options.prepare_mb),
        warmup=options.warmup,
        reps=options.reps,
        corpus=corpus,
        char_dir=char_dir,
        char_meta=prepare_corpus(corpus, char_dir, tokenizer="char", encoding="gpt2", val_fraction=0.1),
        work_dir=work_dir,
        # The trainer's own probe, so that MFU means the same in `make bench` as in training logs.
        peaks={dtype: measure_peak_flops(device, TORCH_DTYPES[dtype], 5) for dtype in ("float32", "bfloat16")},
        bf16_probe=probe_bfloat16(device),
        nanogpt=None if options.nanogpt_dir is None else load_nanogpt(options.nanogpt_dir),
        compile=options.compile,
        force_bf16=options.force_bf16,
        tiny=options.tiny,
    )


def run(options: Options) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ml-playground-bench-") as scratch:
        ctx = build_context(options, Path(scratch))
        rows: list[Row] = []
        seconds: dict[str, float] = {}
        runners: dict[int, Callable[[BenchContext], list[Row]]] = {
            1: case1_train_small,
            2: case2_train_mid,
            3: lambda ctx: case3_time_to_quality(ctx, options.quality_config, options.quality_runs),
            4: case4_sampling,
            5: case5_prepare,
            6: case6_gpu_steps,
            7: case7_gpu_run,
            # Case 8 keeps its runs' TensorBoard events under --out-dir: one run per row.
            8: lambda ctx: case8_ablation(ctx, options.quality_config, options.out_dir / "ablation"),
            9: lambda ctx: case9_startup(ctx, options.startup_runs),
            10: lambda ctx: case10_tokenizers(ctx, options.quality_config),
        }
        for case in options.cases:
            print(f"case {case} ...", file=sys.stderr, flush=True)
            # Compiled code of an earlier case must not shape this one: dynamo keeps what it compiled
            # for GPT.forward across runs (and compiles at most 8 versions of one function).
            torch.compiler.reset()
            started = time.perf_counter()
            rows.extend(runners[case](ctx))
            seconds[str(case)] = time.perf_counter() - started
    probe = ctx.bf16_probe
    return {
        "command": "python -m ml_playground.bench " + " ".join(sys.argv[1:]),
        "machine": machine_info(ctx.device),
        "peak_flops": ctx.peaks,
        "bf16_probe_ms": {"float32": probe.float32_seconds * 1000, "bfloat16": probe.bfloat16_seconds * 1000},
        "settings": {
            "corpus": str(ctx.corpus if options.corpus is not None else "bundled"),
            "nanogpt_dir": None if options.nanogpt_dir is None else str(options.nanogpt_dir),
            **{key: getattr(options, key) for key in SETTINGS},
        },
        "case_seconds": seconds,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if options.render is not None:
            print(f"wrote {render_report(options.render, options.svg)}")
            return 0
        report = run(options)
    except MLPlaygroundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    peaks = report["peak_flops"]
    print(f"peak matmul: fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s")
    print(format_table(report["rows"]))
    path = write_report(options.out_dir, report)
    print(f"wrote {path}")
    if read_series(path):  # the chart is drawn from the report as saved, beside it unless --svg says where
        print(f"wrote {render_report(path, options.svg)}")
    return 0
