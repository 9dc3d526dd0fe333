"""Case 5: preparation's MB/s and peak RSS on a synthetic corpus (GPT-2 BPE, char-level), its GPT-2
encoder against tiktoken's own, and the same text as a document corpus (JSON Lines and parquet)
prepared with GPT-2 BPE by 1 and 2 worker processes. Each runs in a child process (`python -m
ml_playground.bench.prepare_cases INPUT DATASET_DIR char|tiktoken`, `INPUT --compare-bpe MB`, or
`SOURCE --documents DATASET_DIR WORKERS`) that prints JSON, so that each peak RSS is its own: nothing
imported at the top here imports torch."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from ml_playground.config import PrepareConfig
from ml_playground.data.documents import iter_text
from ml_playground.data.prepare import prepare_corpus, prepare_dataset
from ml_playground.errors import DataError
from ml_playground.tokenizers import fast_encoder, load_encoding

if TYPE_CHECKING:
    from ml_playground.bench.context import BenchContext
    from ml_playground.bench.report import Row

BLOCK_BYTES, DISTINCT_BLOCKS = 4 << 20, 4
COMPARE_MB = 128.0  # input for the side-by-side row against tiktoken's own GPT-2 encoding
COMPARE_ROUNDS = 4


def write_synthetic_corpus(path: Path, megabytes: float, seed: int = 1337) -> int:
    """A deterministic English-like ASCII text of `megabytes` MB: a few distinct blocks of
    speaker-headed lines of random words, cycled."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    weights = np.linspace(2.0, 0.1, len(letters))
    words = ["".join(rng.choice(letters, size=int(rng.integers(1, 9)), p=weights / weights.sum())) for _ in range(5000)]
    blocks: list[str] = []
    for _ in range(DISTINCT_BLOCKS):
        size = 0
        while size < BLOCK_BYTES:
            line = " ".join(words[int(i)] for i in rng.integers(0, len(words), size=int(rng.integers(6, 16))))
            blocks.append(f"SPEAKER {int(rng.integers(0, 40))}:\n{line.capitalize()}.\n\n")
            size += len(blocks[-1])
    data, target = "".join(blocks).encode("ascii"), int(megabytes * 1e6)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:  # scratch input, not an output of the tool: no atomic write needed
        for start in range(0, target, len(data)):
            out.write(data[: target - start])
    return target


def write_synthetic_documents(text: Path, jsonl: Path, parquet: Path, documents_per_row_group: int = 1000) -> int:
    """The synthetic text as documents (runs of 20 paragraphs, a few KB each, as web documents
    are), in a .jsonl file and in a parquet file, read and written a row group at a time; the bytes
    of text they hold."""
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    parquet.parent.mkdir(parents=True, exist_ok=True)
    schema = cast("Any", pa.schema([("text", pa.string())]))
    total = 0
    with text.open(encoding="ascii") as source, jsonl.open("w", encoding="utf-8") as out:
        writer: Any = pq.ParquetWriter(parquet, schema)
        rest = ""
        while block := source.read(BLOCK_BYTES):
            paragraphs = (rest + block).split("\n\n")
            rest = paragraphs.pop()
            docs = ["\n\n".join(paragraphs[i : i + 20]) for i in range(0, len(paragraphs), 20)]
            for start in range(0, len(docs), documents_per_row_group):
                group = docs[start : start + documents_per_row_group]
                out.writelines(json.dumps({"text": doc}) + "\n" for doc in group)
                writer.write_table(pa.table({"text": group}, schema=schema))
                total += sum(len(doc) for doc in group)
        if rest:
            out.write(json.dumps({"text": rest}) + "\n")
            writer.write_table(pa.table({"text": [rest]}, schema=schema))
            total += len(rest)
        writer.close()
    return total


def peak_rss_bytes() -> int:
    """This process's peak resident set size. Linux: VmHWM of /proc/self/status (ru_maxrss would
    include the parent's peak from before exec); elsewhere ru_maxrss (bytes on macOS)."""
    status = Path("/proc/self/status")
    lines = status.read_text(encoding="ascii", errors="replace").splitlines() if status.is_file() else []
    if hwm := [line for line in lines if line.startswith("VmHWM:")]:
        return int(hwm[0].split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def compare_bpe(input_path: Path, megabytes: float) -> dict[str, Any]:
    """Seconds of tiktoken's own GPT-2 encoding and of preparation's on the same pieces, all cores,
    alternating over four interleaved quarters of the pieces so that a drift in machine speed hits
    both alike; whether their ids are identical."""
    limit = min(input_path.stat().st_size, int(megabytes * 1e6))
    pieces = [text for _offset, text in iter_text(input_path, 0, limit)]
    exact = load_encoding("gpt2")
    encoders: dict[str, Callable[[str], npt.NDArray[np.uint32]]] = {
        "tiktoken": lambda text: exact.encode_to_numpy(text, disallowed_special=()),
        "prepare": fast_encoder("gpt2").encode_array,
    }
    seconds = dict.fromkeys(encoders, 0.0)
    identical = True
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for round_ in range(COMPARE_ROUNDS):
            part = pieces[round_::COMPARE_ROUNDS]
            ids: dict[str, list[npt.NDArray[np.uint32]]] = {}
            for name in sorted(encoders, reverse=round_ % 2 == 1):
                started = time.perf_counter()
                ids[name] = list(pool.map(encoders[name], part))
                seconds[name] += time.perf_counter() - started
            identical &= all(np.array_equal(a, b) for a, b in zip(ids["tiktoken"], ids["prepare"], strict=True))
    return {"megabytes": limit / 1e6, **{f"{name}_seconds": s for name, s in seconds.items()}, "identical": identical}


def prepare_documents(source: Path, dataset_dir: Path, workers: int) -> dict[str, Any]:
    """A document corpus prepared with GPT-2 BPE by `workers` processes: seconds, this process's
    peak RSS and the largest worker's."""
    cfg = PrepareConfig(dataset_dir=dataset_dir, source=str(source), tokenizer="tiktoken", workers=workers)
    started = time.perf_counter()
    meta = prepare_dataset(cfg, experiment="bench")
    seconds = time.perf_counter() - started
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    tokens = (meta.train_tokens or 0) + (meta.val_tokens or 0)
    return {
        "seconds": seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "worker_peak_rss_bytes": worker_peak,
        "tokens": tokens,
    }


def child(argv: list[str]) -> dict[str, Any]:
    """What the child process measures (its arguments as in the module's docstring)."""
    if argv[1] == "--compare-bpe":
        return compare_bpe(Path(argv[0]), float(argv[2]))
    if argv[1] == "--documents":
        return prepare_documents(Path(argv[0]), Path(argv[2]), int(argv[3]))
    tokenizer: Literal["char", "tiktoken"] = "char" if argv[2] == "char" else "tiktoken"
    if argv[2] != tokenizer:
        raise SystemExit(f"tokenizer must be char or tiktoken, got {argv[2]!r}")
    started = time.perf_counter()
    meta = prepare_corpus(Path(argv[0]), Path(argv[1]), tokenizer=tokenizer, encoding="gpt2", val_fraction=0.1)
    seconds = time.perf_counter() - started
    tokens = (meta.train_tokens or 0) + (meta.val_tokens or 0)  # a preparation always records both
    return {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "tokens": tokens}


def case5_prepare(ctx: BenchContext) -> list[Row]:
    # Imported here: both import torch, which the child must not.
    from ml_playground.bench.report import BpeComparison, Prepare, Row
    from ml_playground.bench.timing import run_process

    def in_child(*args: str, source: Path | None = None) -> dict[str, Any]:
        first = str(source or corpus)
        command = [sys.executable, "-m", "ml_playground.bench.prepare_cases", first, *args]
        result: dict[str, Any] = json.loads(run_process(command, f"{first}: {' '.join(args)}")[1].splitlines()[-1])
        return result

    corpus = ctx.work_dir / "case5" / "synthetic.txt"
    mb = write_synthetic_corpus(corpus, ctx.sizes.prepare_mb) / 1e6
    rows: list[Row] = []
    for tokenizer, name in (("tiktoken", "GPT-2 BPE"), ("char", "char-level")):
        result = in_child(str(ctx.work_dir / "case5" / tokenizer), tokenizer)
        seconds, rss_mb = float(result["seconds"]), int(result["peak_rss_bytes"]) / 2**20
        metrics = Prepare(
            input_mb=mb, seconds=seconds, mb_per_s=mb / seconds, peak_rss_mib=rss_mb, tokens=int(result["tokens"])
        )
        summary = f"{mb / seconds:7.1f} MB/s, peak RSS {rss_mb:5.0f} MiB ({mb:.0f} MB in {seconds:.1f} s)"
        rows.append(Row(case=f"5 prepare {mb:.0f} MB", variant=name, summary=summary, metrics=metrics))
        # Free the disk before the next tokenizer (a GB of char ids is 2 GB of uint16).
        for produced in (ctx.work_dir / "case5" / tokenizer).glob("*.bin"):
            produced.unlink()
    result = in_child("--compare-bpe", str(min(ctx.sizes.prepare_mb, COMPARE_MB)))
    if not result["identical"]:
        raise DataError(f"{corpus}: the GPT-2 ids of preparation differ from tiktoken's")
    size = float(result["megabytes"])
    ours, theirs = size / float(result["prepare_seconds"]), size / float(result["tiktoken_seconds"])
    against = BpeComparison(input_mb=size, mb_per_s=ours, tiktoken_mb_per_s=theirs, ratio=ours / theirs)
    summary = f"{ours:7.1f} MB/s vs {theirs:.1f} MB/s: {ours / theirs:.2f}x, same ids (first {size:.0f} MB)"
    rows.append(
        Row(case=f"5 prepare {size:.0f} MB", variant="GPT-2 BPE vs tiktoken's", summary=summary, metrics=against)
    )
    return rows + _document_rows(ctx, corpus, in_child)


def _document_rows(ctx: BenchContext, corpus: Path, in_child: Callable[..., dict[str, Any]]) -> list[Row]:
    """The synthetic text as JSON Lines and as parquet documents, prepared by 1 and 2 workers."""
    from ml_playground.bench.report import PrepareDocuments, Row

    folder = ctx.work_dir / "case5" / "documents"
    jsonl, parquet = folder / "jsonl" / "corpus.jsonl", folder / "parquet" / "corpus.parquet"
    mb = write_synthetic_documents(corpus, jsonl, parquet) / 1e6
    corpus.unlink()  # the disk holds the text twice more now
    rows: list[Row] = []
    for source, label in ((jsonl, "JSONL"), (parquet, "parquet")):
        for workers in (1, 2):
            dataset = folder / f"{label}-{workers}"
            result = in_child("--documents", str(dataset), str(workers), source=source)
            seconds = float(result["seconds"])
            rss, worker_rss = int(result["peak_rss_bytes"]) / 2**20, int(result["worker_peak_rss_bytes"]) / 2**20
            metrics = PrepareDocuments(
                input_mb=mb,
                source_format=label,
                workers=workers,
                seconds=seconds,
                mb_per_s=mb / seconds,
                peak_rss_mib=rss,
                worker_peak_rss_mib=worker_rss,
                tokens=int(result["tokens"]),
            )
            memory = f"+ {worker_rss:4.0f} MiB per worker" if workers > 1 else "(encodes in-process)"
            summary = (
                f"{mb / seconds:7.1f} MB/s, peak RSS {rss:4.0f} MiB {memory} ({mb:.0f} MB of text in {seconds:.1f} s)"
            )
            variant = f"GPT-2 BPE, {label}, {workers} worker{'s' if workers > 1 else ''}"
            rows.append(Row(case=f"5 prepare documents {mb:.0f} MB", variant=variant, summary=summary, metrics=metrics))
            shutil.rmtree(dataset)
    return rows


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1:])))
