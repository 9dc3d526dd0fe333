"""interop.arch: which architecture of transformers / llama.cpp equals our options, and one-line refusals."""

from __future__ import annotations

from typing import Any

import pytest

from ml_playground.config import GPTConfig
from ml_playground.errors import ExportError
from ml_playground.interop.arch import counterpart

LLAMA: dict[str, Any] = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}


def config(**options: Any) -> GPTConfig:
    return GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=4, n_embd=32, **options)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "gpt2"),
        ({"bias": True, "mlp_hidden": 48, "norm_eps": 1e-6}, "gpt2"),
        (LLAMA, "llama"),
        (LLAMA | {"n_kv_head": 2, "tie_embeddings": False, "rope_theta": 500.0}, "llama"),
        (LLAMA | {"qk_norm": True}, "qwen3"),
        (LLAMA | {"qk_norm": True, "n_kv_head": 1, "tie_embeddings": False}, "qwen3"),
    ],
)
def test_counterpart(options: dict[str, Any], expected: str) -> None:
    assert counterpart(config(**options)) == expected


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (LLAMA | {"mlp": "relu2"}, ["train.model.mlp = 'relu2'"]),
        ({"mlp": "relu2"}, ["train.model.mlp = 'relu2'"]),
        ({"norm": "rmsnorm"}, ["train.model.norm = 'rmsnorm'"]),  # learned positions with RMSNorm
        (LLAMA | {"logit_softcap": 15.0}, ["train.model.logit_softcap = 15.0"]),
        ({"logit_softcap": 30.0}, ["train.model.logit_softcap = 30.0"]),
        (LLAMA | {"bias": True}, ["train.model.bias = true"]),
        ({"tie_embeddings": False}, ["train.model.tie_embeddings = false"]),
        ({"n_kv_head": 2}, ["train.model.n_kv_head = 2"]),
        ({"qk_norm": True}, ["train.model.qk_norm = true"]),
        (
            LLAMA | {"mlp": "gelu", "logit_softcap": 5.0},
            ["train.model.mlp = 'gelu'", "train.model.logit_softcap = 5.0"],
        ),
    ],
)
def test_options_without_a_counterpart_are_named_in_one_line(options: dict[str, Any], named: list[str]) -> None:
    with pytest.raises(ExportError) as caught:
        counterpart(config(**options))
    message = str(caught.value)
    assert "\n" not in message
    for option in named:
        assert option in message
    # Only the options that break the closest architecture are named, not every difference.
    assert message.count("train.model.") == len(named)
