"""model: a padded vocabulary (rows past the tokenizer's ids) is masked out of logits, loss and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ml_playground.config import GPTConfig
from ml_playground.generate import SamplingParams, generate
from ml_playground.model import GPT

REAL = 50
PADDED = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16, bias=True, real_vocab_size=REAL)


def padded_model(config: GPTConfig = PADDED) -> GPT:
    torch.manual_seed(0)
    return GPT(config).eval()


def lure_into_padding(model: GPT) -> None:
    """Make every padding row's logit huge: ln_f outputs all ones, padding rows are +1 (real rows ~0.02)."""
    ln_f = model.transformer["ln_f"]
    assert isinstance(ln_f, nn.LayerNorm)
    assert ln_f.bias is not None
    with torch.no_grad():
        ln_f.weight.zero_()
        ln_f.bias.fill_(1.0)
        model.wte.weight[REAL:] = 1.0


def test_padding_logits_are_minus_infinity_and_real_ones_finite() -> None:
    logits = padded_model()(torch.randint(0, REAL, (2, 8))).logits
    assert logits.shape == (2, 8, 64)
    assert bool(torch.isneginf(logits[..., REAL:]).all())
    assert bool(torch.isfinite(logits[..., :REAL]).all())


def test_padding_ids_are_never_drawn_even_when_their_rows_win() -> None:
    model = padded_model()
    lure_into_padding(model)
    prompt = torch.randint(0, REAL, (4, 3))
    unmasked = GPT(PADDED.replace(real_vocab_size=64)).eval()
    unmasked.load_state_dict(model.state_dict())
    assert bool((generate(unmasked, prompt, 5, SamplingParams(temperature=0.0))[:, 3:] >= REAL).all())  # the lure works
    for params in (SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)):
        drawn = generate(model, prompt, 12, params, generator=torch.Generator().manual_seed(0))
        assert int(drawn.max()) < REAL, params


def test_loss_gives_padding_rows_no_gradient() -> None:
    model = padded_model()
    model.train()
    x, y = torch.randint(0, REAL, (3, 16)), torch.randint(0, REAL, (3, 16))
    loss = model(x, y).loss
    assert loss is not None
    assert bool(torch.isfinite(loss))
    loss.backward()
    grad = model.wte.weight.grad
    assert grad is not None
    assert bool((grad[REAL:] == 0).all())
    assert bool((grad[:REAL] != 0).any())


def test_padded_model_computes_what_its_real_rows_compute_unpadded() -> None:
    """Masked padding rows drop out of the softmax: logits and loss equal the model cut to its tokens."""
    model = padded_model()
    lure_into_padding(model)
    cut = GPT(PADDED.replace(vocab_size=REAL, real_vocab_size=REAL)).eval()
    state = {
        k: v[:REAL] if k in ("transformer.wte.weight", "lm_head.weight") else v for k, v in model.state_dict().items()
    }
    cut.load_state_dict(state)
    x, y = torch.randint(0, REAL, (2, 16)), torch.randint(0, REAL, (2, 16))
    with torch.no_grad():
        ours, theirs = model(x, y), cut(x, y)
    assert torch.equal(ours.logits[..., :REAL], theirs.logits)
    assert ours.loss is not None
    assert theirs.loss is not None
    assert float(ours.loss) == pytest.approx(float(theirs.loss), rel=1e-6)


def test_masked_forward_compiles_as_one_graph() -> None:
    model = padded_model()
    x, y = torch.randint(0, REAL, (2, 8)), torch.randint(0, REAL, (2, 8))
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
    with torch.no_grad():
        assert torch.equal(compiled(x, y).logits, model(x, y).logits)


def test_real_vocab_size_must_fit_the_rows() -> None:
    assert PADDED.real_vocab_size == REAL
    every_row = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16)
    assert every_row.real_vocab_size == 64  # left out: every row is a token, nothing to mask
    assert every_row.replace(vocab_size=80).real_vocab_size == 80  # and it follows the rows
    for bad in (0, 65):
        with pytest.raises(ValueError, match="real_vocab_size"):
            PADDED.replace(real_vocab_size=bad)
