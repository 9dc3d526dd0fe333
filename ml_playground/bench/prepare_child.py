"""Case 5's child process: prepare one corpus, print seconds and peak RSS as JSON.

A separate process per tokenizer, so each peak RSS is that preparation's own (no torch loaded).
Usage: python -m ml_playground.bench.prepare_child INPUT DATASET_DIR char|tiktoken
   or: python -m ml_playground.bench.prepare_child INPUT --compare-bpe MEGABYTES
(the second times tiktoken's own GPT-2 encoding against preparation's on the same first MB).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ml_playground.data.prepare import iter_text, prepare_corpus
from ml_playground.tokenizers import fast_encoder, load_encoding

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


_COMPARE_ROUNDS = 4


def compare_bpe(input_path: Path, megabytes: float) -> dict[str, Any]:
    """Seconds of tiktoken's own GPT-2 encoding and of preparation's on the same pieces, all cores.

    The two alternate over four interleaved quarters of the pieces, so a drift in machine speed
    hits both alike.
    """
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
        for round_ in range(_COMPARE_ROUNDS):
            part = pieces[round_::_COMPARE_ROUNDS]
            ids: dict[str, list[npt.NDArray[np.uint32]]] = {}
            for name in sorted(encoders, reverse=round_ % 2 == 1):
                started = time.perf_counter()
                ids[name] = list(pool.map(encoders[name], part))
                seconds[name] += time.perf_counter() - started
            identical &= all(np.array_equal(a, b) for a, b in zip(ids["tiktoken"], ids["prepare"], strict=True))
    return {
        "megabytes": limit / 1e6,
        "tiktoken_seconds": seconds["tiktoken"],
        "prepare_seconds": seconds["prepare"],
        "identical": identical,
    }


def main(argv: list[str]) -> int:
    if argv[1] == "--compare-bpe":
        print(json.dumps(compare_bpe(Path(argv[0]), float(argv[2]))))
        return 0
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
    tokens = (meta.train_tokens or 0) + (meta.val_tokens or 0)  # a preparation always records both
    report = {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "tokens": tokens}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
