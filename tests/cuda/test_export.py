"""Export of weights trained on CUDA: the Hugging Face directory computes our model's logits
(transformers on the CPU against our GPT on the CPU and on the training device) and imports back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.data.meta import read_meta
from ml_playground.interop import hf
from ml_playground.model import GPT
from ml_playground.train.checkpoint import load_checkpoint
from ml_playground.train.loop import train
from ml_playground.train.modes import Mode
from tests.cuda.device import DEVICE, DTYPE
from tests.cuda.observe import assert_ran, watch_mode
from tests.support.tiny_training import TEXT, tiny_train_table, train_config, write_char_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hf_export_of_cuda_trained_weights_computes_the_same_logits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_char_dataset(tmp_path / "ds", TEXT * 4)
    table = tiny_train_table(tmp_path / "ds", tmp_path / "out")
    table["model"] |= {"n_layer": 2, "n_embd": 32, "block_size": 32, "bias": True}
    table["data"] |= {"block_size": 32}
    table["runtime"] |= {"device": DEVICE, "dtype": DTYPE, "compile": True, "max_iters": 20, "eval_interval": 20}
    mode = Mode()
    calls = watch_mode(mode, monkeypatch)
    train(train_config(table), mode)
    assert_ran(calls, device=DEVICE, dtype=getattr(torch, DTYPE), compiled=True)
    checkpoint = load_checkpoint(tmp_path / "out" / "ckpt_best.pt")
    meta = read_meta(tmp_path / "ds" / "meta.json")
    hf.export_hf(checkpoint.model, checkpoint.arch, meta, tmp_path / "hf")

    from transformers import GPT2LMHeadModel

    theirs: Any = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    ours = GPT(checkpoint.arch)
    ours.load_state_dict(checkpoint.model)
    ours.eval()
    chars = sorted(set(TEXT))
    window = torch.tensor([[chars.index(c) for c in TEXT[:32]]])
    with torch.no_grad():
        hf_logits = theirs.eval()(input_ids=window).logits
        cpu_logits = ours(window).logits
        device_logits = ours.to(DEVICE)(window.to(DEVICE)).logits.cpu()
    real = meta.vocab_size  # the export holds the tokenizer's rows; ours pads to vocab_multiple
    assert hf_logits.shape[-1] == real < cpu_logits.shape[-1]
    assert torch.isneginf(cpu_logits[..., real:]).all()
    cpu_logits, device_logits = cpu_logits[..., :real], device_logits[..., :real]
    assert (hf_logits - cpu_logits).abs().max().item() <= 1e-4
    # float32 on the device (TF32 matmuls where enabled): the same logits up to that rounding
    assert (device_logits - cpu_logits).abs().max().item() <= 1e-2 * cpu_logits.abs().max().item()
    assert hf_logits.std().item() > 0.5  # a trained model, not flat logits

    state_dict, config = hf.import_hf_weights(tmp_path / "hf")
    exported, arch = hf.tokens_only(checkpoint.model, checkpoint.arch, meta)  # what the export wrote
    assert config == arch
    again = GPT(config)
    again.load_state_dict(state_dict)
    for name, tensor in exported.items():
        assert torch.equal(again.state_dict()[name], tensor.cpu()), name
