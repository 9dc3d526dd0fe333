"""harness: tasks checked and loaded before the model (one-line errors naming the task), lm-eval's
evaluator on our model over local task files, results merged, TensorBoard tags and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.config import EvalSettings
from ml_playground.errors import ConfigError, DataError
from ml_playground.evaluation import harness
from tests.integration.tiny_gpt import CORPUS
from tests.support.eval_tasks import GENERATION_YAML, write_tasks
from tests.unit.evaluation.test_lm import TEXT, logprobs, tiny_lm


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def settings(*tasks: Path | str, text: Path | None = None, limit: int | None = None) -> EvalSettings:
    return EvalSettings(tasks=tuple(str(task) for task in tasks), text=text, limit=limit)


def test_local_tasks_and_a_text_through_lm_evals_evaluator(tmp_path: Path) -> None:
    lm = tiny_lm(text=CORPUS)  # the tasks' characters
    tasks = write_tasks(tmp_path)
    # A generation task whose answer is the model's greedy continuation up to a newline (decoded
    # here by full recompute): exact match 1.
    context = "All:\nSpeak,"
    ids = lm.tok_encode(context)
    for _ in range(24):  # the task's max_gen_toks
        ids.append(int(logprobs(lm, ids[-16:])[-1].argmax()))
    answer = lm.codec.decode(ids[len(lm.tok_encode(context)) :]).split("\n")[0]
    (tmp_path / "own.jsonl").write_text(json.dumps({"prompt": context, "answer": answer}) + "\n", encoding="utf-8")
    own = tmp_path / "own.yaml"
    own.write_text(
        GENERATION_YAML.format(data=json.dumps(str(tmp_path / "own.jsonl"))).replace("tiny_generation", "own"),
        encoding="utf-8",
    )
    text = tmp_path / "held_out.txt"
    text.write_text(TEXT, encoding="utf-8")
    chosen = settings(tasks["choice"], tasks["rolling"], tasks["generation"], own, text=text, limit=3)
    plan = harness.plan(chosen, "eval")
    record = harness.evaluate(lm, plan, chosen, "eval")
    results = record["results"]
    assert set(results) == {"tiny_choice", "tiny_rolling", "tiny_generation", "own"}
    assert results["own"]["exact_match,none"] == 1.0
    assert results["tiny_choice"]["sample_len"] == 3  # limit
    assert set(record["versions"]) == set(results)
    assert record["bits_per_byte"]["bytes"] == len(TEXT.encode("utf-8"))
    tags = harness.scalars(record)
    assert tags["eval/tiny_choice/acc"] == results["tiny_choice"]["acc,none"]
    assert tags["eval/tiny_rolling/bits_per_byte"] == results["tiny_rolling"]["bits_per_byte,none"]
    assert tags["eval/text/bits_per_byte"] == record["bits_per_byte"]["bits_per_byte"]
    assert not any("stderr" in tag for tag in tags)
    table = harness.table(record)
    assert "tiny_choice" in table
    assert "acc" in table
    assert f"{record['bits_per_byte']['bits_per_byte']:.4f} bits per byte" in table


def test_a_missing_unparsable_or_dataless_task_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eval\.tasks: task file .*missing\.yaml not found"):
        harness.plan(settings(tmp_path / "missing.yaml"), "eval")
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [tiny\n  x: : y\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml: task YAML does not parse") as caught:
        harness.plan(settings(broken), "eval")
    assert "\n" not in str(caught.value)
    tasks = write_tasks(tmp_path)
    (tmp_path / "tiny_choice.jsonl").unlink()
    with pytest.raises(DataError, match=r"tiny_choice\.yaml: cannot read the task's data"):
        harness.plan(settings(tasks["choice"]), "train.eval")
    with pytest.raises(ConfigError, match=r"eval\.text: .*absent\.txt not found"):
        harness.plan(settings(text=tmp_path / "absent.txt"), "eval")


@pytest.mark.slow  # indexes lm-eval's own ~15000 task files
def test_unknown_names_and_hub_tasks_without_network_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"eval\.tasks: unknown task 'no_such_task'"):
        harness.plan(settings("no_such_task"), "eval")
    with pytest.raises(DataError, match=r"task 'arc_easy' needs a download from the Hugging Face hub") as caught:
        harness.plan(settings("arc_easy"), "eval")
    assert "\n" not in str(caught.value)


def test_merge_joins_the_per_task_sections() -> None:
    first = {"results": {"a": {"acc,none": 0.5}}, "versions": {"a": 1}, "date": 1.0}
    second = {"results": {"b": {"acc,none": 1.0}}, "versions": {"b": 2}, "date": 2.0}
    merged = harness.merge([first, second])
    assert merged["results"] == {"a": {"acc,none": 0.5}, "b": {"acc,none": 1.0}}
    assert merged["versions"] == {"a": 1, "b": 2}
    assert merged["date"] == 1.0
    assert harness.merge([]) == {"results": {}}


def test_scalars_name_the_filter_unless_none() -> None:
    record = {"results": {"t": {"alias": "t", "exact_match,strict-match": 0.25, "acc,none": 1, "acc_stderr,none": 0.1}}}
    assert harness.scalars(record) == {"eval/t/exact_match_strict-match": 0.25, "eval/t/acc": 1.0}
