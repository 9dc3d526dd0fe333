from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn

from ml_playground.config import GPTConfig, OptimConfig
from ml_playground.errors import CheckpointError
from ml_playground.model import GPT
from ml_playground.train.optim import (
    BatchedMuon,
    MuonAdamW,
    block_matrices,
    build_optimizer,
    newton_schulz,
    set_learning_rate,
)
from ml_playground.train.parallel import Parallel
from tests.support.muon_steps import step_both


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


def _muon_setup(**optim: Any) -> tuple[GPT, MuonAdamW]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=13, n_layer=2, n_head=2, n_embd=16, bias=True))
    cfg = OptimConfig(optimizer="muon", learning_rate=0.01, muon_learning_rate=0.05, **optim)
    optimizer = build_optimizer(model.parameters(), cfg, "cpu", hidden_matrices=block_matrices(model))
    assert isinstance(optimizer, MuonAdamW)
    return model, optimizer


def _ids(params: Iterable[torch.Tensor]) -> set[int]:
    return {id(p) for p in params}


def test_muon_gets_the_block_matrices_and_adamw_the_rest() -> None:
    model, optimizer = _muon_setup()
    blocks = model.blocks
    expected = [m.weight for b in blocks for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    muon_params = [p for g in optimizer.muon.param_groups for p in g["params"]]
    adamw_params = [p for g in optimizer.adamw.param_groups for p in g["params"]]
    assert _ids(muon_params) == _ids(expected)
    assert len(muon_params) == len(expected)
    assert _ids(adamw_params) == _ids(model.parameters()) - _ids(expected)
    assert id(model.lm_head.weight) in _ids(adamw_params)  # tied to wte: one AdamW parameter
    assert len(muon_params) + len(adamw_params) == len(list(model.parameters()))
    assert [g["params"] for g in optimizer.param_groups] == [
        g["params"] for part in (optimizer.adamw, optimizer.muon) for g in part.param_groups
    ]


def _step_with_grads_on(model: GPT, optimizer: MuonAdamW, params: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    after = dict(model.named_parameters())
    return {name: p for name, p in before.items() if not torch.equal(p, after[name])}


def test_each_part_steps_only_its_parameters() -> None:
    model, optimizer = _muon_setup()
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = block_matrices(model)
    changed = _step_with_grads_on(model, optimizer, hidden)
    assert set(changed) == {names[id(p)] for p in hidden}
    others = [p for p in model.parameters() if id(p) not in _ids(hidden)]
    changed = _step_with_grads_on(model, optimizer, others)
    assert set(changed) == {names[id(p)] for p in others}


def test_schedule_scales_both_learning_rates() -> None:
    _, optimizer = _muon_setup()
    cfg = OptimConfig(optimizer="muon", learning_rate=0.01, muon_learning_rate=0.05)
    set_learning_rate(optimizer, 0.005, cfg)  # half of the peak
    assert all(g["lr"] == 0.005 for g in optimizer.adamw.param_groups)
    assert all(g["lr"] == pytest.approx(0.025) for g in optimizer.muon.param_groups)
    assert all(g["lr"] in (0.005, pytest.approx(0.025)) for g in optimizer.param_groups)


def test_plain_adamw_gets_the_schedule_rate_exactly() -> None:
    model = GPT(GPTConfig(block_size=8, vocab_size=13, n_layer=1, n_head=2, n_embd=16))
    optimizer = build_optimizer(model.parameters(), OptimConfig(learning_rate=3e-4), "cpu")
    assert isinstance(optimizer, torch.optim.AdamW)
    set_learning_rate(optimizer, 1.2345e-4, OptimConfig(learning_rate=3e-4))
    assert all(g["lr"] == 1.2345e-4 for g in optimizer.param_groups)


def test_muon_state_dict_round_trip_continues_identically(tmp_path: Path) -> None:
    def train(model: GPT, optimizer: MuonAdamW, steps: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x = torch.randint(0, 13, (2, 8), generator=generator)
            loss = model(x, x).loss
            assert loss is not None
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    model, optimizer = _muon_setup(muon_weight_decay=0.01)
    train(model, optimizer, 3, seed=1)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    train(model, optimizer, 3, seed=2)

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert len(saved["optimizer"]["state"]) == len(list(model.parameters()))
    resumed, resumed_optimizer = _muon_setup(muon_weight_decay=0.01)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    train(resumed, resumed_optimizer, 3, seed=2)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True)
    )
    # The loaded groups are the ones the parts step with.
    assert resumed_optimizer.param_groups[0] is resumed_optimizer.adamw.param_groups[0]
    assert resumed_optimizer.param_groups[-1] is resumed_optimizer.muon.param_groups[-1]


def test_adamw_state_does_not_load_into_muon_nor_the_reverse() -> None:
    """Resuming with the other optimizer is a checkpoint error (one line at the CLI), not a traceback."""
    model, optimizer = _muon_setup()
    adamw = build_optimizer(model.parameters(), OptimConfig(), "cpu")
    with pytest.raises(ValueError, match="parameter groups"):
        optimizer.load_state_dict(adamw.state_dict())
    target = Parallel(model)
    with pytest.raises(CheckpointError, match=r"train\.optim") as muon_into_adamw:
        target.load_optimizer_state(adamw, optimizer.state_dict())
    with pytest.raises(CheckpointError, match=r"train\.optim") as adamw_into_muon:
        target.load_optimizer_state(optimizer, adamw.state_dict())
    for error in (muon_into_adamw, adamw_into_muon):
        assert "\n" not in str(error.value)


def test_muon_under_the_grad_scaler() -> None:
    model, optimizer = _muon_setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = model.blocks[0].attn.c_attn.weight.detach().clone()
    x = torch.randint(0, 13, (2, 8))
    loss = model(x, x).loss
    assert loss is not None
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    assert model.blocks[0].attn.c_attn.weight.grad is not None
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(before, model.blocks[0].attn.c_attn.weight)


NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)  # torch.optim.Muon's defaults


def _matrices(*shapes: tuple[int, int]) -> list[nn.Parameter]:
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(shape)) for shape in shapes]


def test_batched_muon_takes_torch_muons_steps_and_state() -> None:
    shapes = [(48, 16), (16, 16), (64, 16), (16, 64), (48, 16)]
    theirs, _ = step_both(shapes, "cpu")
    # torch's state dict loads into a fresh BatchedMuon (same keys, same layout).
    fresh = BatchedMuon(_matrices(*shapes), lr=0.05)
    fresh.load_state_dict(theirs.state_dict())
    for a, b in zip(theirs.param_groups[0]["params"], fresh.param_groups[0]["params"], strict=True):
        assert torch.equal(fresh.state[b]["momentum_buffer"], theirs.state[a]["momentum_buffer"])
    assert fresh.param_groups[0]["momentum"] == 0.9


def test_batched_muon_orthogonalises_in_float32_on_cpu() -> None:
    """With no momentum or decay a step is -lr * NS(grad): NS keeps the gradient's singular vectors
    and maps its singular values into about [0.5, 1.5]. In float32 the vectors are kept to ~1e-6;
    torch's bfloat16 orthogonalisation keeps them to ~1e-2 only."""
    (param,) = _matrices((96, 32))
    grad = torch.randn(96, 32, dtype=torch.float64)
    # torch.linalg is unannotated.
    svd = torch.linalg.svd(grad, full_matrices=False)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    u, vh = cast("torch.Tensor", svd.U), cast("torch.Tensor", svd.Vh)  # pyright: ignore[reportUnknownMemberType]

    def step(optimizer_class: type[torch.optim.Muon]) -> torch.Tensor:
        p = nn.Parameter(param.detach().clone())
        p.grad = grad.float()
        optimizer = optimizer_class([p], lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False)
        optimizer.step()  # type: ignore[no-untyped-call]  # torch.optim.Muon.step is unannotated
        ns: torch.Tensor = (param - p).detach().double() / (0.1 * (96 / 32) ** 0.5)
        return ns  # NS(grad)

    def off_singular_vectors(update: torch.Tensor) -> float:
        core = u.T @ update @ vh.T  # diagonal when update = U diag(s') V^T
        return float((core - torch.diag(torch.diagonal(core))).abs().max())

    ours = step(BatchedMuon)
    singular: torch.Tensor = torch.linalg.svdvals(ours)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]  # torch.linalg is unannotated
    assert singular.min() > 0.5
    assert singular.max() < 1.5
    assert off_singular_vectors(ours) < 1e-4
    assert off_singular_vectors(step(torch.optim.Muon)) > 1e-3


def test_newton_schulz_batches_by_shape_and_keeps_order_and_orientation() -> None:
    updates = [p.detach() for p in _matrices((40, 8), (8, 40), (8, 8), (40, 8), (24, 8))]
    together = newton_schulz(updates, NS_COEFFICIENTS, 5, 1e-7, torch.float32)
    for update, result in zip(updates, together, strict=True):
        alone = newton_schulz([update], NS_COEFFICIENTS, 5, 1e-7, torch.float32)[0]
        assert result.shape == update.shape
        assert result.dtype == update.dtype
        torch.testing.assert_close(result, alone, atol=1e-5, rtol=1e-5)
    # A tall matrix is orthogonalised as its transpose: NS(G.T) = NS(G).T.
    torch.testing.assert_close(together[1], newton_schulz([updates[1].T], NS_COEFFICIENTS, 5, 1e-7, torch.float32)[0].T)


def test_newton_schulz_in_bfloat16_returns_the_input_dtype_close_to_float32() -> None:
    """The CUDA path (bfloat16, as torch.optim.Muon) on CPU: same result to bfloat16's precision."""
    updates = [p.detach() for p in _matrices((40, 8), (8, 40))]
    low = newton_schulz(updates, NS_COEFFICIENTS, 5, 1e-7, torch.bfloat16)
    high = newton_schulz(updates, NS_COEFFICIENTS, 5, 1e-7, torch.float32)
    for result, reference in zip(low, high, strict=True):
        assert result.dtype == torch.float32
        assert 0 < (result - reference).abs().max() < 5e-2
