"""Our GPT -> GGUF, checked by llama.cpp itself (llama-cpp-python): tokens, logits, greedy text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from ml_playground.data.meta import DatasetMeta
from ml_playground.interop.export import quantize
from ml_playground.interop.gguf import FloatType, write_gguf
from ml_playground.model import GPT
from ml_playground.tokenizers import Tokenizer
from tests.integration.tiny_gpt import CORPUS, LLAMA, char_model, gpt2_model, greedy
from tests.support.greedy import float32_shortfalls

pytestmark = pytest.mark.slow

PROMPT = "First Citizen:\nBefore we"
GGML_TYPE_F32 = 0  # keep llama.cpp's KV cache in float32 (its default is f16)
# Logit bounds. f32 files: 1e-3 against our float32 model (the rest is llama.cpp's GELU, a tanh
# approximation looked up in float16). f16 files: llama.cpp also rounds the activations to float16
# for every f16 matmul, so even against our model with the stored f16 weights the difference is
# ~1.5e-3 on these logits (|logit| up to ~6); 2e-3 is the bound.
F32_BOUND = 1e-3
F16_BOUND = 2e-3
Q8_BOUND = 0.1  # 8-bit weights: our logits within this


class LlamaRun:
    """A llama.cpp context on one GGUF file: eval tokens, read logits, greedy decode."""

    def __init__(self, path: Path, n_ctx: int):
        from llama_cpp import Llama

        self.llm = Llama(
            str(path), n_ctx=n_ctx, logits_all=True, verbose=False, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32
        )

    def close(self) -> None:
        self.llm.close()

    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return ids

    def logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        self.llm.reset()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves reset() unannotated
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        self.llm.reset()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves reset() unannotated
        self.llm.eval(ids)
        out = list(ids)
        for _ in range(new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            self.llm.eval([token])
        return out


def our_logits(model: GPT, ids: list[int]) -> npt.NDArray[np.float32]:
    """(T, tokens): a padded model's -inf padding columns are not in the GGUF file."""
    with torch.no_grad():
        logits: npt.NDArray[np.float32] = (
            model(torch.tensor([ids])).logits[0, :, : model.config.real_vocab_size].numpy()
        )
    return logits


def rounded_to_f16(model: GPT) -> GPT:
    """Our model with the weights an f16 GGUF stores (2-D tensors in float16, the rest float32)."""
    copy = GPT(model.config).eval()
    state = {name: t.half().float() if t.ndim == 2 else t for name, t in model.state_dict().items()}
    copy.load_state_dict(state)
    return copy


def export(tmp_path: Path, model: GPT, meta: DatasetMeta, ftype: FloatType) -> Path:
    path = tmp_path / f"model-{ftype}.gguf"
    write_gguf(path, model.state_dict(), model.config, meta, ftype=ftype, name="tiny")
    return path


def check_float_file(path: Path, model: GPT, tokenizer: Tokenizer, tolerance: float) -> float:
    run = LlamaRun(path, model.config.block_size)
    assert run.llm.n_vocab() == model.config.real_vocab_size
    assert run.tokenize(PROMPT) == tokenizer.encode(PROMPT)
    window = tokenizer.encode(CORPUS)[: model.config.block_size]
    diff = float(np.abs(run.logits(window) - our_logits(model, window)).max())
    assert diff <= tolerance, diff
    ours = greedy(model, tokenizer.encode(PROMPT), 50)
    assert tokenizer.decode(run.greedy(tokenizer.encode(PROMPT), 50)) == tokenizer.decode(ours)
    run.close()
    return diff


@pytest.mark.parametrize("ftype", ["f32", "f16"])
def test_llama_cpp_reproduces_char_model(tmp_path: Path, ftype: FloatType) -> None:
    model, tokenizer, meta = char_model(steps=30)
    reference = rounded_to_f16(model) if ftype == "f16" else model
    bound = F16_BOUND if ftype == "f16" else F32_BOUND
    check_float_file(export(tmp_path, model, meta, ftype), reference, tokenizer, bound)


# llama.cpp's `llama` (adjacent-pair rope: query/key rows reordered) and `qwen3` (half rope + QK-norm).
LLAMA_CASES: dict[str, dict[str, Any]] = {
    "llama-tied": LLAMA,
    "llama-untied-gqa": LLAMA | {"n_kv_head": 2, "tie_embeddings": False},
    "qwen3-gqa": LLAMA | {"qk_norm": True, "n_kv_head": 2},
    "qwen3-untied-padded": LLAMA | {"qk_norm": True, "tie_embeddings": False, "vocab_multiple": 64},
}


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_llama_cpp_reproduces_llama_style_model(tmp_path: Path, case: str) -> None:
    model, tokenizer, meta = char_model(**LLAMA_CASES[case])
    check_float_file(export(tmp_path, model, meta, "f32"), model, tokenizer, F32_BOUND)


def test_llama_cpp_reproduces_padded_char_model(tmp_path: Path) -> None:
    model, tokenizer, meta = char_model(steps=30, vocab_multiple=64)
    assert model.config.vocab_size == 64
    check_float_file(export(tmp_path, model, meta, "f32"), model, tokenizer, F32_BOUND)


def test_llama_cpp_reproduces_gpt2_bpe_model(tmp_path: Path) -> None:
    model, tokenizer, meta = gpt2_model(steps=10)
    path = export(tmp_path, model, meta, "f16")
    check_float_file(path, rounded_to_f16(model), tokenizer, F16_BOUND)
    run = LlamaRun(path, model.config.block_size)
    text = "It's 1234 héllo wörld\n\n  spaced"
    assert run.tokenize(text) == tokenizer.encode(text)
    run.close()


def test_q8_0_file_loads_and_stays_close(tmp_path: Path) -> None:
    model, tokenizer, meta = char_model(steps=30)
    quantized = tmp_path / "model-q8_0.gguf"
    quantize(export(tmp_path, model, meta, "f32"), quantized, "q8_0")
    assert quantized.stat().st_size < (tmp_path / "model-f32.gguf").stat().st_size
    run = LlamaRun(quantized, model.config.block_size)
    window = tokenizer.encode(CORPUS)[: model.config.block_size]
    assert float(np.abs(run.logits(window) - our_logits(model, window)).max()) <= Q8_BOUND
    prompt = tokenizer.encode(PROMPT)
    generated = run.greedy(prompt, 50)
    # Each of llama.cpp's picks lies within two logit errors of our float model's largest logit
    # there: 8-bit weights may break a near-tie the other way, never pick a clearly worse token.
    assert max(float32_shortfalls(model, generated, prompt_length=len(prompt))) <= 2 * Q8_BOUND
    run.close()
