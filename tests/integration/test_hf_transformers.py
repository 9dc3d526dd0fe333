"""Our GPT -> HF export, checked by `transformers` itself: logits, greedy generation, round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.interop import hf
from ml_playground.model import GPT
from tests.integration.tiny_gpt import CORPUS, LLAMA, char_model, gpt2_model, greedy

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach the hub; everything is a local directory


def load_hf(path: Path) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel

    model: torch.nn.Module = GPT2LMHeadModel.from_pretrained(path)
    return model.eval()


@pytest.mark.parametrize(("kind", "vocab_multiple"), [("char", 1), ("gpt2", 1), ("char", 64), ("gpt2", 64)])
def test_hf_logits_and_greedy_text_equal_ours(tmp_path: Path, kind: str, vocab_multiple: int) -> None:
    """Padded models (vocab_multiple 64: GPT-2's 50257 rows -> 50304) export the tokenizer's rows only."""
    from transformers import AutoTokenizer

    model, tokenizer, meta = (
        char_model(vocab_multiple=vocab_multiple) if kind == "char" else gpt2_model(vocab_multiple=vocab_multiple)
    )
    assert model.config.vocab_size % vocab_multiple == 0
    hf.export_hf(model.state_dict(), model.config, meta, tmp_path)
    theirs = load_hf(tmp_path)
    hf_tokenizer: Any = AutoTokenizer.from_pretrained(tmp_path)  # pyright: ignore[reportUnknownVariableType]  # untyped
    prompt = "First Citizen:\nBefore we"
    ids = tokenizer.encode(prompt)
    assert hf_tokenizer(prompt)["input_ids"] == ids

    window = torch.tensor([tokenizer.encode(CORPUS)[:90]])
    with torch.no_grad():
        their_logits = theirs(input_ids=window).logits
        diff = (their_logits - model(window).logits[..., : meta.vocab_size]).abs().max().item()
    assert their_logits.shape[-1] == meta.vocab_size  # the tokenizer's vocabulary, not the padded rows
    assert diff <= 1e-4

    expected = greedy(model, ids, 50)
    prompt_ids = torch.tensor([ids])
    with torch.no_grad():
        # An explicit attention mask: with a pad id, HF would mask prompt tokens equal to it.
        generated = theirs.generate(  # type: ignore[operator]  # transformers' generate is untyped
            prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=50, do_sample=False
        )
    assert generated[0].tolist() == expected
    assert hf_tokenizer.decode(generated[0]) == tokenizer.decode(expected)


def test_hf_directory_imports_back_into_the_same_model(tmp_path: Path) -> None:
    model, _, meta = char_model(steps=5, bias=False)
    hf.export_hf(model.state_dict(), model.config, meta, tmp_path)
    # A save by transformers itself (its own key layout and metadata) must import too.
    saved = tmp_path / "resaved"
    load_hf(tmp_path).save_pretrained(saved)  # type: ignore[operator]  # untyped transformers API
    (saved / "tokenizer.json").write_bytes((tmp_path / "tokenizer.json").read_bytes())
    state_dict, config = hf.import_hf_weights(saved)
    assert config == model.config
    again = GPT(config)
    again.load_state_dict(state_dict)
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


# Llama-style options and the transformers class that computes the same.
LLAMA_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "llama-tied": (LLAMA, "LlamaForCausalLM"),
    "llama-untied-gqa": (LLAMA | {"n_kv_head": 2, "tie_embeddings": False}, "LlamaForCausalLM"),
    "qwen3-gqa": (LLAMA | {"qk_norm": True, "n_kv_head": 2}, "Qwen3ForCausalLM"),
    "qwen3-untied-padded": (
        LLAMA | {"qk_norm": True, "tie_embeddings": False, "vocab_multiple": 64},
        "Qwen3ForCausalLM",
    ),
}


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_llama_style_model_equals_its_transformers_class(tmp_path: Path, case: str) -> None:
    """Logits within 1e-4, identical greedy text, and the directory (ours and transformers' own
    save of it) imports back into the same model."""
    from transformers import AutoModelForCausalLM

    options, architecture = LLAMA_CASES[case]
    model, tokenizer, meta = char_model(**options)
    hf.export_hf(model.state_dict(), model.config, meta, tmp_path / "hf")
    theirs: Any = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    theirs.eval()
    assert type(theirs).__name__ == architecture

    window = torch.tensor([tokenizer.encode(CORPUS)[:90]])
    with torch.no_grad():
        diff = (theirs(input_ids=window).logits - model(window).logits[..., : meta.vocab_size]).abs().max().item()
    assert diff <= 1e-4

    ids = tokenizer.encode("First Citizen:\nBefore we")
    prompt_ids = torch.tensor([ids])
    with torch.no_grad():
        generated = theirs.generate(
            prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=50, do_sample=False
        )
    assert tokenizer.decode(generated[0].tolist()) == tokenizer.decode(greedy(model, ids, 50))

    theirs.save_pretrained(tmp_path / "resaved")
    (tmp_path / "resaved" / "tokenizer.json").write_bytes((tmp_path / "hf" / "tokenizer.json").read_bytes())
    exported = model.config.replace(vocab_size=meta.vocab_size, real_vocab_size=meta.vocab_size)  # padding rows dropped
    for folder in ("hf", "resaved"):
        state_dict, config = hf.import_hf_weights(tmp_path / folder)
        assert config == exported
        for name, tensor in state_dict.items():
            assert torch.equal(tensor, model.state_dict()[name][: tensor.size(0)]), (folder, name)
