from __future__ import annotations

import torch

from ml_playground.config import OptimConfig
from ml_playground.model import GPT, GPTConfig
from ml_playground.train.optim import build_optimizer


def test_decay_only_on_matrices_and_embeddings() -> None:
    model = GPT(GPTConfig(block_size=8, vocab_size=13, n_layer=2, n_head=2, n_embd=16, bias=True))
    optimizer = build_optimizer(model.parameters(), OptimConfig(weight_decay=0.05, beta1=0.8, beta2=0.95), "cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    # Every parameter exactly once (the tied lm_head/wte weight is one parameter).
    ids = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert decay["betas"] == (0.8, 0.95)


def test_frozen_parameters_are_left_out() -> None:
    model = GPT(GPTConfig(block_size=8, vocab_size=13, n_layer=1, n_head=2, n_embd=16))
    model.transformer["wpe"].weight.requires_grad_(False)
    optimizer = build_optimizer(model.parameters(), OptimConfig(), "cpu")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert all(p.requires_grad for p in params)
    assert len(params) == sum(1 for p in model.parameters() if p.requires_grad)
    assert torch.is_tensor(params[0])
