"""Case 5: preparation speed (MB/s) and peak RSS on a synthetic corpus, GPT-2 BPE and char-level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ml_playground.bench.context import BenchContext
from ml_playground.bench.report import BpeComparison, Prepare, Row
from ml_playground.errors import DataError

_BLOCK_BYTES = 4 << 20
_DISTINCT_BLOCKS = 4
_COMPARE_MB = 128.0  # input for the side-by-side row against tiktoken's own GPT-2 encoding


def _block(rng: np.random.Generator, words: list[str]) -> str:
    """About _BLOCK_BYTES of speaker-headed lines of random words."""
    parts: list[str] = []
    size = 0
    while size < _BLOCK_BYTES:
        picks = rng.integers(0, len(words), size=int(rng.integers(6, 16)))
        line = " ".join(words[int(i)] for i in picks)
        text = f"SPEAKER {int(rng.integers(0, 40))}:\n{line.capitalize()}.\n\n"
        parts.append(text)
        size += len(text)
    return "".join(parts)


def write_synthetic_corpus(path: Path, megabytes: float, seed: int = 1337) -> int:
    """A deterministic English-like ASCII text of `megabytes` MB (a few distinct blocks cycled)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    weights = np.linspace(2.0, 0.1, len(letters))
    weights /= weights.sum()
    words = ["".join(rng.choice(letters, size=int(rng.integers(1, 9)), p=weights)) for _ in range(5000)]
    blocks = [_block(rng, words).encode("ascii") for _ in range(_DISTINCT_BLOCKS)]
    target = int(megabytes * 1e6)
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:  # scratch input, not an output of the tool: no atomic write needed
        i = 0
        while written < target:
            chunk = blocks[i % len(blocks)][: target - written]
            out.write(chunk)
            written += len(chunk)
            i += 1
    return written


def _in_child(corpus: Path, *args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "ml_playground.bench.prepare_child", str(corpus), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DataError(f"{corpus}: {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _bpe_against_tiktoken(corpus: Path, megabytes: float) -> Row:
    """Preparation's GPT-2 encoder vs tiktoken's own on the same first megabytes, side by side."""
    result = _in_child(corpus, "--compare-bpe", str(megabytes))
    if not result["identical"]:
        raise DataError(f"{corpus}: the GPT-2 ids of preparation differ from tiktoken's")
    size = float(result["megabytes"])
    ours, theirs = size / float(result["prepare_seconds"]), size / float(result["tiktoken_seconds"])
    metrics = BpeComparison(input_mb=size, mb_per_s=ours, tiktoken_mb_per_s=theirs, ratio=ours / theirs)
    summary = f"{ours:7.1f} MB/s vs {theirs:.1f} MB/s: {ours / theirs:.2f}x, same ids (first {size:.0f} MB)"
    return Row(case=f"5 prepare {size:.0f} MB", variant="GPT-2 BPE vs tiktoken's", summary=summary, metrics=metrics)


def case5_prepare(ctx: BenchContext) -> list[Row]:
    corpus = ctx.work_dir / "case5" / "synthetic.txt"
    size = write_synthetic_corpus(corpus, ctx.sizes.prepare_mb)
    rows: list[Row] = []
    for tokenizer, name in (("tiktoken", "GPT-2 BPE"), ("char", "char-level")):
        result = _in_child(corpus, str(ctx.work_dir / "case5" / tokenizer), tokenizer)
        mb_per_s = size / 1e6 / float(result["seconds"])
        rss_mb = int(result["peak_rss_bytes"]) / 2**20
        metrics = Prepare(
            input_mb=size / 1e6,
            seconds=float(result["seconds"]),
            mb_per_s=mb_per_s,
            peak_rss_mib=rss_mb,
            tokens=int(result["tokens"]),
        )
        summary = f"{mb_per_s:7.1f} MB/s, peak RSS {rss_mb:5.0f} MiB ({size / 1e6:.0f} MB in {result['seconds']:.1f} s)"
        rows.append(Row(case=f"5 prepare {size / 1e6:.0f} MB", variant=name, summary=summary, metrics=metrics))
        # Free the disk before the next tokenizer (a GB of char ids is 2 GB of uint16).
        for produced in (ctx.work_dir / "case5" / tokenizer).glob("*.bin"):
            produced.unlink()
    rows.append(_bpe_against_tiktoken(corpus, min(ctx.sizes.prepare_mb, _COMPARE_MB)))
    return rows
