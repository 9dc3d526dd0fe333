"""A model on a trained BPE, exported: transformers' AutoTokenizer and llama.cpp tokenize a test
text as ours does, and compute our logits; the export is an init_from source for the same dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.data.meta import identity_difference
from ml_playground.interop import hf
from ml_playground.interop.source import load_source
from tests.integration.test_gguf_llama_cpp import F32_BOUND, LlamaRun, check_float_file, export
from tests.integration.tiny_gpt import CORPUS, LLAMA, bpe_model, greedy

pytestmark = pytest.mark.slow

TEXT = "It's 1234567 héllo wörld 漢字 🎉\n\n  spaced\tFirst Citizen:\nBefore we"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach the hub; everything is a local directory


def test_hf_export_tokenizes_and_computes_as_ours(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer, meta = bpe_model(**LLAMA)
    hf.export_hf(model.state_dict(), model.config, meta, tmp_path)
    hf_tokenizer: Any = AutoTokenizer.from_pretrained(tmp_path)  # pyright: ignore[reportUnknownVariableType]  # untyped
    assert hf_tokenizer(TEXT)["input_ids"] == tokenizer.encode(TEXT)
    assert hf_tokenizer.eos_token_id == tokenizer.eot_token == 0
    theirs: Any = AutoModelForCausalLM.from_pretrained(tmp_path)
    theirs.eval()
    window = torch.tensor([tokenizer.encode(CORPUS)[:90]])
    with torch.no_grad():
        diff = (theirs(input_ids=window).logits - model(window).logits).abs().max().item()
    assert diff <= 1e-4
    # The export is a source for the dataset the model was trained on: the same tokenizer.
    source = load_source(str(tmp_path), "train.model.init_from")
    assert identity_difference(source.meta, meta, a_name="a", b_name="b", tokenizer_only=True) == ""
    ids = tokenizer.encode("First Citizen:")
    assert greedy(model, ids, 20) == greedy(source_model(source), ids, 20)


def source_model(source: Any) -> Any:
    from ml_playground.model import GPT

    model = GPT(source.config)
    source.load_into(model)
    return model.eval()


def test_llama_cpp_tokenizes_and_computes_as_ours(tmp_path: Path) -> None:
    # A Llama: llama.cpp's GPT-2 GELU (a float16 table) would need a looser logit bound.
    model, tokenizer, meta = bpe_model(**LLAMA)
    path = export(tmp_path, model, meta, "f32")
    check_float_file(path, model, tokenizer, F32_BOUND)
    run = LlamaRun(path, model.config.block_size)
    assert run.tokenize(TEXT) == tokenizer.encode(TEXT)
    assert run.llm.token_eos() == tokenizer.eot_token
    run.close()
