"""`python -m ml_playground.bench --tiny` runs every case end to end and writes a valid JSON report.

No timing is asserted: only that each case ran and reported finite, positive measurements.
"""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ml_playground.bench import quality_case
from ml_playground.bench.runner import main
from tests.support import nanogpt_standin
from tests.support.tiny_training import TEXT


def _legend(svg: Path) -> list[str]:
    """The chart's series names (its texts after the title, the threshold's last): valid XML or this raises."""
    texts = [text.text or "" for text in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}text")]
    return texts[texts.index("validation loss vs wall time (s)") + 1 : -1]


@pytest.mark.slow
def test_tiny_bench_writes_a_report_for_every_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 4, encoding="utf-8")
    out_dir = tmp_path / "bench"
    argv = ["--tiny", "--no-compile", "--force-bf16", "--warmup", "0", "--reps", "1", "--prepare-mb", "0.05"]
    argv += ["--startup-runs", "1"]
    code = main([*argv, "--corpus", str(corpus), "--out-dir", str(out_dir)])
    assert code == 0
    report = json.loads((out_dir / "latest.json").read_text())
    assert report["peak_flops"]["float32"] > 0
    assert report["peak_flops"]["bfloat16"] > 0
    cases = {row["case"].split()[0] for row in report["rows"]}
    assert cases == {"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}
    by_variant = {(row["case"].split()[0], row["variant"]): row["metrics"] for row in report["rows"]}
    assert by_variant[("1", "ml-playground fp32")]["tokens_per_s"] > 0
    assert by_variant[("1", "ml-playground fp32")]["nanogpt_baseline"] == "reference"
    assert math.isfinite(by_variant[("2", "bf16 autocast")]["max_loss_gap_vs_fp32"])
    # MFU divides by the larger of the first probe and one taken after the case's timed steps.
    fp32, bf16 = by_variant[("1", "ml-playground fp32")], by_variant[("2", "bf16 autocast")]
    assert fp32["peak_flops"] >= report["peak_flops"]["float32"]
    assert bf16["peak_flops"] >= report["peak_flops"]["bfloat16"]
    ours = by_variant[("3", "ml-playground shakespeare_char_fast_cpu.toml")]
    assert ours["iters"] == 6
    assert [[point["iter"] for point in curve] for curve in ours["curves"]] == [[3, 6]] * 2  # two runs
    assert by_variant[("8", "baseline")]["iters"] == 6
    # the default best config is case 3's (rope, QK-norm, Muon): a run of its own
    assert by_variant[("8", "best")]["same_run_as"] is None
    assert by_variant[("8", "best")]["model"]["position"] == "rope"
    assert by_variant[("8", "optimizer=muon")]["time_vs_baseline"] > 0
    kept = sorted(path.name for path in (out_dir / "ablation").iterdir())  # TensorBoard events, one run per row
    assert kept == sorted(variant for case, variant in by_variant if case == "8")
    assert by_variant[("4", "KV cache")]["ms_per_token_last_10pct"] > 0
    char, bpe = by_variant[("10", "char")], by_variant[("10", "trained BPE 270")]
    assert char["bytes_per_token"] == 1.0  # an ASCII corpus
    assert bpe["bytes_per_token"] > 1.0
    assert bpe["vocab_size"] == 270
    assert all(math.isfinite(row["val_bpb"]) for row in (char, bpe, by_variant[("10", "tiktoken cl100k_base")]))
    startup = by_variant[("9", "ml-playground train")]  # a whole `ml-playground train` process
    assert startup["runs"] == 1
    assert startup["seconds"] > 0
    assert startup["vs_nanogpt"] is None  # no checkout: nothing to set it against
    assert by_variant[("5", "GPT-2 BPE")]["peak_rss_mib"] > 0
    assert by_variant[("5", "char-level")]["tokens"] == 50_000  # one id per ASCII byte
    documents = [metrics for (case, variant), metrics in by_variant.items() if case == "5" and "worker" in variant]
    assert [(m["source_format"], m["workers"]) for m in documents] == [
        ("JSONL", 1),
        ("JSONL", 2),
        ("parquet", 1),
        ("parquet", 2),
    ]
    assert len({m["tokens"] for m in documents}) == 1  # the same documents whatever the format and workers
    against = by_variant[("5", "GPT-2 BPE vs tiktoken's")]  # present only when the ids were identical
    assert against["input_mb"] == 0.05
    assert against["ratio"] == pytest.approx(against["mb_per_s"] / against["tiktoken_mb_per_s"])
    table = capsys.readouterr().out
    assert "peak matmul" in table
    assert f"wrote {out_dir / 'loss_vs_time.svg'}" in table  # drawn from the report just written
    legend = _legend(out_dir / "loss_vs_time.svg")
    assert legend == ["baseline: GPT-2 + AdamW (bundestag_char_cpu.toml)", "best: shakespeare_char_fast_cpu.toml"]


def test_missing_nanogpt_checkout_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    code = main(
        ["--tiny", "--corpus", str(corpus), "--nanogpt-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --nanogpt-dir:")
    assert "model.py not found" in err[-1]


def test_side_by_side_with_a_checkout_alternates_case_3_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = tmp_path / "nanoGPT"
    checkout.mkdir()
    shutil.copy(Path(nanogpt_standin.__file__), checkout / "model.py")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 4, encoding="utf-8")
    order: list[str] = []
    for name, side in (("timed_training", "ours"), ("_nanogpt_run", "nanoGPT")):
        original = getattr(quality_case, name)

        def recorded(*args: Any, _original: Any = original, _side: str = side) -> Any:
            order.append(_side)
            return _original(*args)

        monkeypatch.setattr(quality_case, name, recorded)
    argv = ["--tiny", "--no-compile", "--warmup", "0", "--reps", "1", "--cases", "1,3,4,6,7", "--quality-runs", "3"]
    code = main([*argv, "--corpus", str(corpus), "--nanogpt-dir", str(checkout), "--out-dir", str(tmp_path / "out")])
    assert code == 0
    # ABBA...: a steady drift of the machine's speed hits both sides alike.
    assert order == ["ours", "nanoGPT", "nanoGPT", "ours", "ours", "nanoGPT"]
    report = json.loads((tmp_path / "out" / "latest.json").read_text())
    by_variant = {(row["case"].split()[0], row["variant"]): row["metrics"] for row in report["rows"]}
    ours, theirs = (
        by_variant[("3", "ml-playground shakespeare_char_fast_cpu.toml")],
        by_variant[("3", "nanoGPT README config (checkout)")],
    )
    assert ours["runs"] == theirs["runs"] == 3
    assert [[point["iter"] for point in curve] for curve in theirs["curves"]] == [[0, 3, 6]] * 3
    assert theirs["final_val_loss"] == pytest.approx(sum(curve[-1]["val_loss"] for curve in theirs["curves"]) / 3)
    assert len(theirs["seconds_per_run"]) == 3
    assert ours["nanogpt_baseline"] == "measured"
    legend = _legend(tmp_path / "out" / "loss_vs_time.svg")
    assert legend == ["nanoGPT README run", "best: shakespeare_char_fast_cpu.toml"]  # no case 8: no ablation baseline
    assert by_variant[("1", "ml-playground fp32")]["nanogpt_baseline"] == "measured"
    assert by_variant[("4", "nanoGPT sample.py (checkout)")]["tokens_per_s"] > 0
    # The GPU cases' nanoGPT sides (train.py's and bench.py's steps, train.py's whole run) ran too.
    assert by_variant[("6", "nanoGPT train.py step")]["tokens_per_s"] > 0
    assert by_variant[("6", "nanoGPT bench.py")]["tokens_per_s"] > 0
    assert by_variant[("6", "ml-playground B4")]["vs_nanogpt"] > 0
    assert by_variant[("6", "ml-playground shakespeare_char_gpu.toml")]["logged_vs_wall"] > 0
    run_theirs = by_variant[("7", "nanoGPT train.py loop")]
    assert run_theirs["iters"] == 6
    assert math.isfinite(run_theirs["final_val_loss"])
    assert by_variant[("7", "ml-playground shakespeare_char_gpu.toml")]["vs_nanogpt"] > 0
