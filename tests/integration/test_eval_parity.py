"""Our lm-eval model class against lm-eval's own `hf` model on our Hugging Face export of the same
weights: the same per-request log-likelihoods (within 1e-4), the same accuracy and metrics, the
same generated text, through lm-eval's evaluator on three local tasks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from ml_playground.data.meta import DatasetMeta
from ml_playground.evaluation.harness import simple_evaluate
from ml_playground.evaluation.lm import PlaygroundLM
from ml_playground.interop import hf
from ml_playground.model import GPT
from ml_playground.runtime import resolve_runtime
from ml_playground.tokenizers import Tokenizer
from tests.integration.tiny_gpt import LLAMA, char_model, gpt2_model
from tests.support.eval_tasks import write_tasks

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # datasets' cache of the task files


def flat_responses(samples: list[dict[str, Any]]) -> list[Any]:
    """Every request's response, in lm-eval's document and request order."""
    return [response for sample in samples for response in sample["resps"]]


# GPT-2-style (learned positions, LayerNorm, GELU) with GPT-2 BPE, which has an end-of-text token,
# so lm-eval's `hf` model can also generate; Llama-style (rope, rmsnorm, swiglu) with a char
# vocabulary, whose export has no end-of-text token, which `hf` generation needs: its texts are
# conditioned on a newline (our prefix token), given to `hf` as its prefix_token_id.
Build = Callable[[], tuple[GPT, Tokenizer, DatasetMeta]]
CASES: dict[str, tuple[Build, tuple[str, ...]]] = {
    "gpt2-style-bpe": (lambda: gpt2_model(steps=10), ("choice", "rolling", "generation")),
    "llama-style-char": (lambda: char_model(**LLAMA), ("choice", "rolling")),
}


@pytest.mark.parametrize("case", CASES)
def test_our_model_scores_as_lm_evals_hf_model_on_our_export(tmp_path: Path, case: str) -> None:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hf_model = cast("Callable[..., object]", HFLM)  # lm-eval's own annotations are incomplete

    build, kinds = CASES[case]
    model, tokenizer, meta = build()
    hf.export_hf(model.state_dict(), model.config, meta, tmp_path / "hf")
    ours = PlaygroundLM(model, tokenizer, resolve_runtime("cpu", "float32"), batch_size=3)
    theirs = hf_model(
        pretrained=str(tmp_path / "hf"), device="cpu", dtype="float32", batch_size=1, prefix_token_id=ours.eot_token_id
    )
    tasks = write_tasks(tmp_path / "tasks")
    specs = [str(tasks[kind]) for kind in kinds]
    manager = TaskManager(include_defaults=False)
    results: list[dict[str, Any]] = []
    for lm in (ours, theirs):
        result = simple_evaluate(model=lm, tasks=specs, task_manager=manager, log_samples=True, bootstrap_iters=0)
        assert result is not None
        results.append(result)
    mine, reference = (result["results"] for result in results)
    assert set(mine) == {f"tiny_{kind}" for kind in kinds}
    for task in mine:
        ours_responses = flat_responses(results[0]["samples"][task])
        their_responses = flat_responses(results[1]["samples"][task])
        assert len(ours_responses) == len(their_responses) > 0
        for a, b in zip(ours_responses, their_responses, strict=True):
            if task == "tiny_generation":
                assert a == b  # the same greedy text
            elif task == "tiny_choice":
                (ll_a, greedy_a), (ll_b, greedy_b) = a[0], b[0]
                assert ll_a == pytest.approx(ll_b, abs=1e-4)
                assert greedy_a == greedy_b
            else:
                assert a[0] == pytest.approx(b[0], abs=1e-4)
        for metric, value in mine[task].items():
            if isinstance(value, float):
                assert value == pytest.approx(reference[task][metric], rel=1e-5), (task, metric)
    assert mine["tiny_choice"]["acc,none"] == reference["tiny_choice"]["acc,none"]
