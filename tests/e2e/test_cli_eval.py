"""`ml-playground eval` in real subprocesses on a briefly trained char model, and [train.eval]
during training: results file, table, TensorBoard scalars at the checkpoint's step; bad input as
one line with its exit code; a killed evaluation leaves no result file."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.evaluation.results import config_sha256
from ml_playground.train.checkpoint import load_checkpoint
from ml_playground.train.loop import train
from tests.integration.tiny_gpt import CORPUS
from tests.support.eval_tasks import write_tasks
from tests.support.tiny_training import read_scalars, tiny_train_table, train_config, write_char_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def toml_value(value: object) -> str:
    """A TOML value for a string, number or list of strings (JSON writes them alike)."""
    return json.dumps(value)


def write_eval_config(path: Path, out_dir: Path, **keys: object) -> Path:
    table = {"out_dir": str(out_dir)} | keys
    path.write_text("[eval]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items()))
    return path


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A char model trained for 6 steps on the corpus the tasks are written in, and the tasks."""
    write_char_dataset(tmp_path / "ds", CORPUS * 8)
    train(train_config(tiny_train_table(tmp_path / "ds", tmp_path / "out")))
    return tmp_path / "out", write_tasks(tmp_path / "tasks")


def test_eval_writes_results_table_and_tensorboard_at_the_checkpoints_step(
    tmp_path: Path, trained: tuple[Path, dict[str, Path]]
) -> None:
    out_dir, tasks = trained
    text = tmp_path / "held_out.txt"
    text.write_text(CORPUS[:150], encoding="utf-8")
    config = write_eval_config(tmp_path / "eval.toml", out_dir, tasks=[str(p) for p in tasks.values()], text=str(text))
    done = cli("eval", "shakespeare_char", "--exp-config", str(config))
    assert done.returncode == 0, done.stderr
    best = load_checkpoint(out_dir / "ckpt_best.pt")
    record = json.loads((out_dir / "eval" / f"{best.iter_num}.json").read_text(encoding="utf-8"))
    assert set(record["results"]) == {"tiny_choice", "tiny_rolling", "tiny_generation"}
    assert record["ml_playground"] == {
        "step": best.iter_num,
        "config_sha256": config_sha256(best.config),
        "checkpoint": str(out_dir / "ckpt_best.pt"),
    }
    assert record["bits_per_byte"]["bytes"] == 150
    assert "| tiny_choice " in done.stdout
    assert f"{record['bits_per_byte']['bits_per_byte']:.4f} bits per byte" in done.stdout
    scalars = read_scalars(out_dir / "logs" / "tb")
    acc = record["results"]["tiny_choice"]["acc,none"]
    [(step, logged_acc)] = scalars["eval/tiny_choice/acc"]
    [(bpb_step, logged_bpb)] = scalars["eval/text/bits_per_byte"]
    assert step == bpb_step == best.iter_num
    assert logged_acc == pytest.approx(acc)
    assert logged_bpb == pytest.approx(record["bits_per_byte"]["bits_per_byte"])
    assert "val/loss" in scalars  # beside the loss curves


def test_bad_input_is_one_line_with_its_exit_code(tmp_path: Path, trained: tuple[Path, dict[str, Path]]) -> None:
    out_dir, tasks = trained
    choice = [str(tasks["choice"])]
    zero = cli(
        "eval",
        "shakespeare_char",
        "--exp-config",
        str(write_eval_config(tmp_path / "a.toml", out_dir, tasks=choice, limit=0)),
    )
    assert (zero.returncode, zero.stderr.count("\n")) == (2, 1)
    assert "eval.limit: Input should be greater than 0" in zero.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [tiny\n  x: : y\n", encoding="utf-8")
    bad_yaml = cli(
        "eval",
        "shakespeare_char",
        "--exp-config",
        str(write_eval_config(tmp_path / "b.toml", out_dir, tasks=[str(broken)])),
    )
    assert bad_yaml.returncode == 2
    assert f"{broken}: task YAML does not parse" in bad_yaml.stderr.splitlines()[-1]
    assert "Traceback" not in bad_yaml.stderr

    raw: dict[str, Any] = torch.load(out_dir / "ckpt_best.pt", weights_only=False)
    raw["dataset_meta"] = None
    (tmp_path / "no_tokenizer").mkdir()
    torch.save(raw, tmp_path / "no_tokenizer" / "ckpt_best.pt")
    no_tokenizer = cli(
        "eval",
        "shakespeare_char",
        "--exp-config",
        str(write_eval_config(tmp_path / "c.toml", tmp_path / "no_tokenizer", tasks=choice)),
    )
    assert no_tokenizer.returncode == 5
    assert "'dataset_meta' is missing; cannot decode tokens" in no_tokenizer.stderr.splitlines()[-1]
    assert not (out_dir / "eval").exists()


def test_a_killed_evaluation_leaves_no_result_file(tmp_path: Path, trained: tuple[Path, dict[str, Path]]) -> None:
    out_dir, _ = trained
    text = tmp_path / "long.txt"
    text.write_text(CORPUS * 20000, encoding="utf-8")  # ~5 MB: minutes of scoring
    config = write_eval_config(tmp_path / "eval.toml", out_dir, text=str(text))
    process = subprocess.Popen(
        [sys.executable, "-m", "ml_playground.cli", "eval", "shakespeare_char", "--exp-config", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the model is loaded: scoring has begun
            if line.startswith("evaluating "):
                break
        time.sleep(1.0)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (out_dir / "eval").exists() or list((out_dir / "eval").iterdir()) == []


def test_training_evaluates_every_n_steps_and_trains_as_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_char_dataset(tmp_path / "ds", CORPUS * 8)
    tasks = write_tasks(tmp_path / "tasks")
    missing = tmp_path / "tasks" / "gone.yaml"  # a task that fails: logged, training goes on
    missing.write_text(tasks["choice"].read_text().replace("tiny_choice", "gone"), encoding="utf-8")
    missing.write_text(missing.read_text().replace("tiny_choice.jsonl", "gone.jsonl"), encoding="utf-8")
    plain = tiny_train_table(tmp_path / "ds", tmp_path / "plain")
    with_eval = tiny_train_table(tmp_path / "ds", tmp_path / "with_eval")
    with_eval["eval"] = {"tasks": [str(tasks["choice"]), str(missing)], "every": 4, "limit": 2}
    train(train_config(plain))
    with caplog.at_level(logging.WARNING):
        train(train_config(with_eval))
    failures = [r.getMessage() for r in caplog.records if "eval task" in r.getMessage()]
    assert len(failures) == 2  # steps 0 and 4
    assert all(str(missing) in message and "\n" not in message for message in failures)
    scalars = read_scalars(tmp_path / "with_eval" / "logs" / "tb")
    assert [step for step, _ in scalars["eval/tiny_choice/acc"]] == [0, 4]
    assert json.loads((tmp_path / "with_eval" / "eval" / "4.json").read_text())["ml_playground"]["step"] == 4
    # Evaluation draws no random numbers that training would see: the same losses and weights.
    assert (
        read_scalars(tmp_path / "with_eval" / "logs" / "tb")["train/loss"]
        == read_scalars(tmp_path / "plain" / "logs" / "tb")["train/loss"]
    )
    ours, theirs = (load_checkpoint(tmp_path / run / "ckpt_last.pt").model for run in ("with_eval", "plain"))
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
