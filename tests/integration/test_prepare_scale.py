"""A large synthetic corpus is prepared with bounded memory (the exact figures are in `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ml_playground.data.meta import read_meta

_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from ml_playground.data.prepare import prepare_corpus

    meta = prepare_corpus(Path(sys.argv[1]), Path(sys.argv[2]), tokenizer="char", encoding="gpt2", val_fraction=0.1)
    # VmHWM: peak RSS of this process image (ru_maxrss would include the parent's, kept across exec).
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    print(json.dumps({"peak_rss_mb": peak_mb, "tokens": meta.train_tokens + meta.val_tokens}))
    """
)


@pytest.mark.slow
def test_large_corpus_prepares_with_bounded_memory(tmp_path: Path) -> None:
    block = "".join(f"Rede {i}: Sehr geehrte Damen und Herren, die Größe zählt – Übermaß nicht.\n" for i in range(1000))
    corpus = tmp_path / "input.txt"
    with corpus.open("w", encoding="utf-8") as handle:
        for _ in range(64 * 1024 * 1024 // len(block.encode("utf-8"))):
            handle.write(block)
    size = corpus.stat().st_size
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(corpus), str(tmp_path / "ds")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Loading the whole corpus would need several times its size (bytes + str + code points);
    # streaming stays near the interpreter's baseline (~100 MB) whatever the corpus size.
    assert report["peak_rss_mb"] < 300, report
    meta = read_meta(tmp_path / "ds" / "meta.json")
    assert meta.train_tokens is not None
    assert meta.val_tokens is not None
    assert report["tokens"] == meta.train_tokens + meta.val_tokens == len(corpus.read_text(encoding="utf-8"))
    assert size > 60 * 1024 * 1024
    train = np.memmap(tmp_path / "ds" / "train.bin", dtype=meta.numpy_dtype, mode="r")
    itos = meta.itos or []
    ids: list[int] = train[:60].tolist()
    assert "".join(itos[i] for i in ids) == block[:60]
