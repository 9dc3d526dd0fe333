"""Case 5's child process: prepare one corpus, print seconds and peak RSS as JSON.

A separate process per tokenizer, so each peak RSS is that preparation's own (no torch loaded).
Usage: python -m ml_playground.bench.prepare_child INPUT DATASET_DIR char|tiktoken
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Literal

from ml_playground.data.prepare import prepare_corpus

_TOKENIZERS: dict[str, Literal["char", "tiktoken"]] = {"char": "char", "tiktoken": "tiktoken"}


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux: VmHWM of /proc/self/status (ru_maxrss would include the parent's peak from before exec).
    Elsewhere: ru_maxrss (bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def main(argv: list[str]) -> int:
    input_path, dataset_dir = Path(argv[0]), Path(argv[1])
    tokenizer = _TOKENIZERS.get(argv[2])
    if tokenizer is None:
        raise SystemExit(f"tokenizer must be char or tiktoken, got {argv[2]!r}")
    started = time.perf_counter()
    meta = prepare_corpus(
        input_path,
        dataset_dir,
        tokenizer=tokenizer,
        encoding="gpt2",
        val_fraction=0.1,
    )
    seconds = time.perf_counter() - started
    report = {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "tokens": meta.train_tokens + meta.val_tokens}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
