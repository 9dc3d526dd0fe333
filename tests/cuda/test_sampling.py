"""Generation on CUDA: the KV-cache decode loop picks exactly what full recomputation picks, in
float32 and under bfloat16 autocast (cache kept in bfloat16), past block_size; the sampler on a
CUDA runtime continues a checkpoint with eager float32's greedy choices."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch

from ml_playground.config import GPTConfig, SampleConfig, SampleRuntimeConfig, SampleSettings
from ml_playground.data.meta import DatasetMeta
from ml_playground.generate import SamplingParams, generate
from ml_playground.model import GPT
from ml_playground.sample import run_sampling
from ml_playground.tokenizers import CharTokenizer
from ml_playground.train.checkpoint import Checkpoint, save_checkpoint
from tests.cuda.device import DEVICE, DTYPE
from tests.cuda.observe import Call, assert_ran, watch
from tests.support.greedy import float32_shortfalls
from tests.support.tiny_training import TEXT


def _model(vocab_size: int, block_size: int = 16) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32))
    # GPT-2 init gives near-uniform logits; larger embeddings make greedy choices clear-cut and varied.
    with torch.no_grad():
        if model.wpe is not None:  # absent with rotary positions
            model.wpe.weight.mul_(10.0)
        model.wte.weight.mul_(3.0)
    return model.eval()


@pytest.mark.parametrize("keep", [None, 5])
def test_cached_greedy_equals_uncached_greedy(keep: int | None) -> None:
    """float32 on the device: the cached loop (prefill, one-token steps, re-prefill after each
    crop) and full recomputation pick the same 60 tokens."""
    model = _model(vocab_size=29).to(DEVICE)
    prompt = torch.tensor([[3, 1, 4, 1, 5]], device=DEVICE)
    params = SamplingParams(temperature=0.0)
    with torch.no_grad():
        cached, uncached = (generate(model, prompt, 60, params, keep=keep, use_cache=c) for c in (True, False))
    assert cached.device.type == torch.device(DEVICE).type
    assert cached.shape == (1, 65)
    assert torch.equal(cached, uncached)
    assert len({int(token) for token in cached[0, 5:]}) > 3  # a real sequence, not one repeated token


def test_cached_greedy_under_autocast_picks_float32_choices() -> None:
    """Under autocast with the cache in that dtype, cached and uncached decoding both pick, at
    every step, a token within 0.05 of eager float32's largest logit (rounding, not a wrong pick;
    a stale or misplaced cache entry moves a pick by far more)."""
    model = _model(vocab_size=29)
    device_model = copy.deepcopy(model).to(DEVICE)
    calls: list[Call] = []
    watch(device_model, calls)
    prompt = torch.tensor([[3, 1, 4, 1, 5]], device=DEVICE)
    dtype = getattr(torch, DTYPE)

    def autocast() -> contextlib.AbstractContextManager[object]:
        return torch.autocast(device_type=torch.device(DEVICE).type, dtype=dtype)

    for use_cache in (True, False):
        with torch.no_grad():
            tokens = generate(
                device_model,
                prompt,
                60,
                SamplingParams(temperature=0.0),
                use_cache=use_cache,
                cache_dtype=dtype,
                autocast=autocast,
            )
        assert max(float32_shortfalls(model, [int(t) for t in tokens[0]], prompt_length=5)) < 0.05
    assert_ran(calls, device=DEVICE, dtype=dtype, compiled=False)  # on the GPU, under autocast


def test_sampler_on_cuda_continues_with_float32_greedy_choices(tmp_path: Path) -> None:
    """run_sampling on [sample.runtime] device/dtype: the checkpoint's model, greedy, past
    block_size; each token within 0.05 of eager float32's largest logit (bfloat16 rounding)."""
    itos = sorted(set(TEXT))
    model = _model(vocab_size=len(itos))
    meta = DatasetMeta(kind="char", vocab_size=len(itos), dtype="uint16", itos=itos)
    checkpoint = Checkpoint(
        schema_version=1,
        model=model.state_dict(),
        arch=model.config,
        iter_num=1,
        best_val_loss=1.0,
        config={},
        dataset_meta=meta.to_dict(),
    )
    save_checkpoint(tmp_path / "ckpt_best.pt", checkpoint)
    runtime = SampleRuntimeConfig(out_dir=tmp_path, device=DEVICE, dtype=DTYPE)
    settings = SampleSettings(start="First", max_new_tokens=40, temperature=0.0)
    (text,) = run_sampling(SampleConfig(runtime=runtime, sample=settings))
    assert len(text) == len("First") + 40
    tokens = CharTokenizer(itos).encode(text)
    assert max(float32_shortfalls(model, tokens, prompt_length=len("First"))) < 0.05
