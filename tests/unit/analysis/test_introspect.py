from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ml_playground.analysis.introspect import attention_weights, inspect_sequence
from ml_playground.config import GPTConfig
from ml_playground.model import GPT

TINY = GPTConfig(block_size=16, vocab_size=13, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


def test_losses_match_the_model_loss(model: GPT) -> None:
    ids = [1, 5, 2, 7, 7, 3, 0, 12]
    report = inspect_sequence(model, ids, top_k=4)
    idx = torch.tensor([ids])
    with torch.no_grad():
        loss = model(idx[:, :-1], idx[:, 1:]).loss
    assert loss is not None
    assert report.token_losses.shape == (len(ids) - 1,)
    assert math.isclose(report.mean_loss, float(loss), rel_tol=1e-5)
    assert math.isclose(report.perplexity, math.exp(float(loss)), rel_tol=1e-5)


def test_top_k_is_the_sorted_next_token_distribution(model: GPT) -> None:
    ids = [3, 1, 4, 1, 5]
    report = inspect_sequence(model, ids, top_k=3)
    with torch.no_grad():
        probs = F.softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    assert report.top_ids.shape == report.top_probs.shape == (len(ids), 3)
    expected = torch.topk(probs, 3, dim=-1)
    assert torch.equal(report.top_ids, expected.indices)
    torch.testing.assert_close(report.top_probs, expected.values)
    # k larger than the vocabulary is clamped
    assert inspect_sequence(model, ids, top_k=100).top_ids.shape == (len(ids), TINY.vocab_size)


def test_top_k_covers_only_the_tokenizer_ids_of_a_padded_vocabulary(model: GPT) -> None:
    ids = [3, 1, 4]
    report = inspect_sequence(model, ids, top_k=5, vocab_size=6)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        full_loss = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    assert int(report.top_ids.max()) < 6
    torch.testing.assert_close(report.top_probs, torch.topk(F.softmax(logits[:, :6], dim=-1), 5).values)
    assert math.isclose(report.mean_loss, float(full_loss), rel_tol=1e-5)  # the loss keeps the full vocabulary


def test_attention_weights_reproduce_the_attention_output(model: GPT) -> None:
    """The recomputed weights, applied to the values, give exactly what the module computed."""
    attn = model.blocks[0].attn
    x = torch.randn(1, 6, TINY.n_embd)
    weights = attention_weights(attn, x)  # (1, nh, T, T)
    _, _, v = attn.c_attn(x).split(TINY.n_embd, dim=2)
    v = v.view(1, 6, TINY.n_head, TINY.head_dim).transpose(1, 2)
    y = (weights @ v).transpose(1, 2).reshape(1, 6, TINY.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(attn.c_proj(y), attn(x))


@pytest.mark.parametrize(
    "options",
    [
        {"position": "rope"},
        {"qk_norm": True, "position": "rope"},
        {"n_kv_head": 1},
        {"n_kv_head": 2, "position": "rope"},
    ],
    ids=["rope", "qk_norm", "mqa", "gqa"],
)
def test_attention_weights_follow_the_architecture_options(options: dict[str, Any]) -> None:
    """LIT's maps for rotary, QK-normed and grouped-query attention reproduce the module's output."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=13, n_layer=1, n_head=4, n_embd=16, **options)
    attn = GPT(config).eval().blocks[0].attn
    x = torch.randn(1, 6, config.n_embd)
    weights = attention_weights(attn, x)  # (1, nh, T, T)
    _, _, v = attn.heads(x)  # (1, nkv, T, hs)
    v = v.repeat_interleave(config.n_head // config.n_kv_head, dim=1)
    y = (weights @ v).transpose(1, 2).reshape(1, 6, config.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(attn.c_proj(y), attn(x))


def test_attention_maps_are_causal_distributions(model: GPT) -> None:
    ids = [2, 2, 9, 4, 1, 0]
    report = inspect_sequence(model, ids, top_k=2)
    assert len(report.attention) == TINY.n_layer
    for heads in report.attention:
        assert heads.shape == (TINY.n_head, len(ids), len(ids))
        torch.testing.assert_close(heads.sum(-1), torch.ones(TINY.n_head, len(ids)))
        assert torch.all(heads.triu(diagonal=1) == 0)


def test_pooled_state_is_the_mean_final_hidden_state(model: GPT) -> None:
    ids = [5, 6, 7]
    report = inspect_sequence(model, ids, top_k=2)
    with torch.no_grad():
        idx = torch.tensor([ids])
        assert model.wpe is not None
        x = model.wte(idx) + model.wpe(torch.arange(3))
        for block in model.blocks:
            x = block(x)
        expected = model.transformer["ln_f"](x)[0].mean(0)
    torch.testing.assert_close(report.pooled, expected)


def test_single_token_has_no_loss(model: GPT) -> None:
    report = inspect_sequence(model, [4], top_k=2)
    assert report.token_losses.numel() == 0
    assert report.mean_loss == 0.0
    assert report.perplexity == 1.0


@pytest.mark.parametrize("length", [0, TINY.block_size + 1])
def test_length_outside_the_block_is_rejected(model: GPT, length: int) -> None:
    with pytest.raises(ValueError, match="tokens"):
        inspect_sequence(model, [1] * length, top_k=2)
