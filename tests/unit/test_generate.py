"""Generation pipeline: filters, next-token draw, window policy and the cached decode loop."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ml_playground.config import GPTConfig
from ml_playground.generate import (
    SamplingParams,
    generate,
    logits_to_probs,
    next_token,
    top_k_filter,
    top_p_filter,
    window_start,
)
from ml_playground.model import GPT, KVCache
from tests.support.greedy import float32_shortfalls

NEG_INF = float("-inf")


def tiny_model(block_size: int = 16, vocab_size: int = 29, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16))
    # GPT-2 init gives near-uniform logits; larger embeddings make greedy choices clear-cut and varied.
    with torch.no_grad():
        if model.wpe is not None:  # absent with rotary positions
            model.wpe.weight.mul_(10.0)
        model.wte.weight.mul_(3.0)
    return model.eval()


def ids(row: Tensor) -> list[int]:
    return [int(v) for v in row]


def record_forward_lengths(model: GPT) -> list[int]:
    lengths: list[int] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        idx: Tensor = args[0]
        lengths.append(idx.size(1))

    model.register_forward_pre_hook(hook)
    return lengths


class TestFilters:
    def test_top_k_keeps_the_k_largest(self) -> None:
        logits = torch.tensor([[1.0, 3.0, 2.0, 5.0]])
        assert top_k_filter(logits, 2).tolist() == [[NEG_INF, 3.0, NEG_INF, 5.0]]

    def test_top_k_at_or_above_vocab_is_a_no_op(self) -> None:
        logits = torch.tensor([[1.0, 3.0, 2.0]])
        assert torch.equal(top_k_filter(logits, 3), logits)
        assert torch.equal(top_k_filter(logits, 10), logits)

    def test_top_k_is_per_row(self) -> None:
        logits = torch.tensor([[1.0, 3.0, 2.0], [9.0, 8.0, 7.0]])
        assert top_k_filter(logits, 1).tolist() == [[NEG_INF, 3.0, NEG_INF], [9.0, NEG_INF, NEG_INF]]

    @pytest.mark.parametrize(
        ("p", "kept"),
        [(0.3, [0]), (0.5, [0]), (0.51, [0, 2]), (0.8, [0, 2]), (0.81, [0, 2, 3]), (0.96, [0, 1, 2, 3])],
    )
    def test_top_p_keeps_the_smallest_nucleus(self, p: float, kept: list[int]) -> None:
        # Probabilities 0.5, 0.05, 0.3, 0.15 (not sorted, to check the scatter back).
        logits = torch.tensor([[0.5, 0.05, 0.3, 0.15]]).log()
        out = top_p_filter(logits, p)
        assert [i for i in range(4) if math.isfinite(out[0, i].item())] == kept
        for i in kept:
            assert out[0, i].item() == pytest.approx(logits[0, i].item())

    def test_top_p_one_is_a_no_op(self) -> None:
        logits = torch.tensor([[0.1, 0.2, 0.3]])
        assert torch.equal(top_p_filter(logits, 1.0), logits)

    def test_probs_apply_temperature_then_top_k(self) -> None:
        logits = torch.tensor([[1.0, 2.0, 4.0, 3.0]])
        probs = logits_to_probs(logits, SamplingParams(temperature=0.5, top_k=2))
        expected = torch.softmax(torch.tensor([3.0 / 0.5, 4.0 / 0.5]), dim=0)
        assert [float(v) for v in probs[0, [3, 2]]] == pytest.approx([float(v) for v in expected])
        assert probs[0, [0, 1]].tolist() == [0.0, 0.0]

    def test_probs_combine_top_k_and_top_p(self) -> None:
        logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
        # top_k=3 renormalizes to 4/9, 3/9, 2/9; top_p=0.7 then keeps the first two.
        probs = logits_to_probs(logits, SamplingParams(temperature=1.0, top_k=3, top_p=0.7))
        assert probs[0].tolist() == pytest.approx([4 / 7, 3 / 7, 0.0, 0.0])

    def test_greedy_has_no_distribution(self) -> None:
        with pytest.raises(ValueError, match="greedy"):
            logits_to_probs(torch.zeros(1, 3), SamplingParams(temperature=0.0))

    def test_filters_and_probabilities_work_on_the_last_dimension(self) -> None:
        """(B, T, vocab) logits: every (b, t) row is filtered and normalised on its own."""
        logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
        rows = logits.reshape(6, 5)
        assert torch.equal(top_k_filter(logits, 2).reshape(6, 5), top_k_filter(rows, 2))
        assert torch.equal(top_p_filter(logits, 0.6).reshape(6, 5), top_p_filter(rows, 0.6))
        params = SamplingParams(temperature=0.7, top_k=3)
        probs = logits_to_probs(logits, params)
        assert torch.allclose(probs.reshape(6, 5), logits_to_probs(rows, params))
        assert torch.allclose(probs.sum(-1), torch.ones(2, 3))

    def test_default_params_sample_the_model_distribution(self) -> None:
        logits = torch.tensor([[0.5, 0.2, 0.3]]).log()
        assert SamplingParams().greedy is False
        assert logits_to_probs(logits, SamplingParams())[0].tolist() == pytest.approx([0.5, 0.2, 0.3])

    def test_params_are_frozen_keyword_only_and_slotted(self) -> None:
        params = SamplingParams(temperature=0.5)
        with pytest.raises(dataclasses.FrozenInstanceError):
            params.temperature = 1.0  # type: ignore[misc]  # the point: assignment is refused
        assert not hasattr(params, "__dict__")
        with pytest.raises(TypeError):
            SamplingParams(0.5)  # type: ignore[call-arg]  # the point: positional arguments are refused


class TestNextToken:
    def test_greedy_is_argmax(self) -> None:
        logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]])
        assert next_token(logits, SamplingParams(temperature=0.0)).tolist() == [1, 0]

    def test_draws_stay_inside_the_filter(self) -> None:
        logits = torch.tensor([[0.0, 1.0, 0.5, 0.9, -1.0]])
        gen = torch.Generator().manual_seed(0)
        drawn = {int(next_token(logits, SamplingParams(temperature=2.0, top_k=2), gen)) for _ in range(300)}
        assert drawn == {1, 3}

    def test_draw_frequencies_follow_the_probabilities(self) -> None:
        logits = torch.tensor([[0.7, 0.2, 0.1]]).log()
        gen = torch.Generator().manual_seed(1)
        draws = [int(next_token(logits, SamplingParams(temperature=1.0), gen)) for _ in range(3000)]
        assert draws.count(0) / 3000 == pytest.approx(0.7, abs=0.04)
        assert draws.count(2) / 3000 == pytest.approx(0.1, abs=0.03)

    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("temperature", [0.0, 1.0])
    def test_one_token_per_row(self, batch: int, temperature: float) -> None:
        logits = torch.randn(batch, 7, generator=torch.Generator().manual_seed(2))
        token = next_token(logits, SamplingParams(temperature=temperature))  # no generator: torch's default
        assert token.shape == (batch,)
        assert token.dtype == torch.long
        assert ((token >= 0) & (token < 7)).all()

    def test_greedy_is_argmax_of_each_row_of_any_batch_shape(self) -> None:
        logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(4))
        assert torch.equal(next_token(logits, SamplingParams(temperature=0.0)), logits.argmax(-1))

    def test_same_seed_same_draws(self) -> None:
        logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3))
        params = SamplingParams(temperature=1.0, top_p=0.9)
        first = [ids(next_token(logits, params, torch.Generator().manual_seed(7))) for _ in range(2)]
        assert first[0] == first[1]


class TestWindow:
    def test_context_grows_until_it_no_longer_fits(self) -> None:
        assert window_start(5, 0, 8, 8) == 0
        assert window_start(8, 0, 8, 8) == 0

    def test_full_keep_slides_one_token_at_a_time(self) -> None:
        assert window_start(9, 0, 8, 8) == 1
        assert window_start(10, 1, 8, 8) == 2

    def test_smaller_keep_crops_then_grows_again(self) -> None:
        assert window_start(9, 0, 8, 4) == 5
        assert window_start(13, 5, 8, 4) == 5
        assert window_start(14, 5, 8, 4) == 10


class TestDecodeLoop:
    @pytest.mark.parametrize("keep", [None, 12, 5, 1])
    def test_greedy_with_and_without_cache_is_identical_past_block_size(self, keep: int | None) -> None:
        model = tiny_model(block_size=16)
        prompt = torch.tensor([[3, 1, 4, 1, 5]])
        params = SamplingParams(temperature=0.0)
        cached = generate(model, prompt, 60, params, keep=keep, use_cache=True)
        uncached = generate(model, prompt, 60, params, keep=keep, use_cache=False)
        assert cached.shape == (1, 65)
        assert torch.equal(cached, uncached)
        assert torch.equal(cached[:, :5], prompt)
        assert len(set(ids(cached[0, 5:]))) > 3  # a real sequence, not one repeated token

    @pytest.mark.parametrize("keep", [None, 7])
    def test_sampling_with_and_without_cache_is_identical_past_block_size(self, keep: int | None) -> None:
        model = tiny_model(block_size=16)
        prompt = torch.tensor([[3, 1, 4]])
        params = SamplingParams(temperature=1.0, top_k=20, top_p=0.95)
        runs = [
            generate(model, prompt, 50, params, keep=keep, use_cache=c, generator=torch.Generator().manual_seed(11))
            for c in (True, False)
        ]
        assert torch.equal(runs[0], runs[1])
        assert len(set(ids(runs[0][0, 20:]))) > 5

    def test_prompt_longer_than_block_size_is_cropped(self) -> None:
        model = tiny_model(block_size=8)
        prompt = torch.arange(20).unsqueeze(0) % 29
        params = SamplingParams(temperature=0.0)
        cached = generate(model, prompt, 10, params)
        uncached = generate(model, prompt, 10, params, use_cache=False)
        assert torch.equal(cached, uncached)
        # The first new token comes from the last block_size prompt tokens only.
        tail = generate(model, prompt[:, -8:], 1, params, use_cache=False)
        assert cached[0, 20] == tail[0, 8]

    def test_cached_logits_match_full_forward(self) -> None:
        model = tiny_model(block_size=16)
        ids = torch.tensor([[2, 7, 1, 8, 2, 8, 1, 8, 2, 8]])
        cache = KVCache(1, model.config, torch.device("cpu"), torch.float32)
        with torch.inference_mode():
            steps = [model(ids[:, :4], cache=cache).logits]
            steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(4, 10)]
            full = model(ids).logits
        assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)

    @pytest.mark.parametrize(("prompt_len", "new", "capacity"), [(3, 5, 8), (3, 20, 16), (20, 4, 16)])
    def test_cache_holds_the_sequence_at_most_a_block(
        self, monkeypatch: pytest.MonkeyPatch, prompt_len: int, new: int, capacity: int
    ) -> None:
        built: list[KVCache] = []

        class Recorded(KVCache):
            def __init__(self, *args: Any) -> None:
                super().__init__(*args)
                built.append(self)

        monkeypatch.setattr("ml_playground.generate.KVCache", Recorded)
        model = tiny_model(block_size=16)
        prompt = torch.arange(prompt_len).unsqueeze(0) % 29
        params = SamplingParams(temperature=0.0)
        cached = generate(model, prompt, new, params)
        assert [cache.capacity for cache in built] == [capacity]
        assert built[0].layers[0].k.size(2) == capacity
        assert torch.equal(cached, generate(model, prompt, new, params, use_cache=False))

    def test_cache_prefills_once_then_feeds_one_token_per_step(self) -> None:
        model = tiny_model(block_size=16)
        lengths = record_forward_lengths(model)
        generate(model, torch.tensor([[1, 2, 3]]), 20, SamplingParams(temperature=0.0), keep=10)
        # Prefill 3; one token per step until 16 fit; crop to 10 and rebuild; one token per step.
        assert lengths == [3] + [1] * 13 + [10] + [1] * 5

    def test_full_window_slides_without_writing_the_cache(self) -> None:
        model = tiny_model(block_size=8)
        calls: list[tuple[int, bool]] = []

        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls.append((args[0].size(1), kwargs.get("cache") is not None))

        model.register_forward_pre_hook(hook, with_kwargs=True)
        generate(model, torch.tensor([[1, 2, 3]]), 10, SamplingParams(temperature=0.0))
        # Prefill 3 and one token per step through the cache until 8 fit; past the block every
        # token needs a full 8-token window that the next token discards: no cache there.
        assert calls == [(3, True)] + [(1, True)] * 5 + [(8, False)] * 4

    def test_uncached_reruns_the_whole_context(self) -> None:
        model = tiny_model(block_size=16)
        lengths = record_forward_lengths(model)
        generate(model, torch.tensor([[1, 2, 3]]), 5, SamplingParams(temperature=0.0), use_cache=False)
        assert lengths == [3, 4, 5, 6, 7]

    def test_sampling_is_seeded(self) -> None:
        model = tiny_model()
        prompt = torch.tensor([[1, 2]])
        params = SamplingParams(temperature=1.0, top_k=10)

        def run(seed: int) -> list[int]:
            return ids(generate(model, prompt, 30, params, generator=torch.Generator().manual_seed(seed))[0])

        assert run(5) == run(5)
        assert run(5) != run(6)

    def test_batch_rows_are_generated_independently(self) -> None:
        model = tiny_model()
        prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
        params = SamplingParams(temperature=0.0)
        both = generate(model, prompts, 25, params)
        assert torch.equal(both[1:], generate(model, prompts[1:], 25, params))
        assert torch.equal(both[:1], generate(model, prompts[:1], 25, params))

    def test_callback_sees_every_new_token(self) -> None:
        model = tiny_model()
        seen: list[int] = []
        out = generate(
            model, torch.tensor([[1]]), 12, SamplingParams(temperature=0.0), on_token=lambda t: seen.append(int(t[0]))
        )
        assert seen == out[0, 1:].tolist()

    def test_bfloat16_autocast_with_a_matching_cache(self) -> None:
        """Greedy bf16 tokens (bf16 cache, past block_size) are float32's argmax up to rounding:
        each lies within 0.05 of the float32 maximum (logits here spread ~0.5 from max to median)."""
        model = tiny_model()

        def autocast() -> torch.autocast:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)

        out = generate(
            model,
            torch.tensor([[1, 2]]),
            20,
            SamplingParams(temperature=0.0),
            cache_dtype=torch.bfloat16,
            autocast=autocast,
        )
        assert out.shape == (1, 22)
        assert max(float32_shortfalls(model, ids(out[0]), prompt_length=2)) < 0.05

    @pytest.mark.parametrize("keep", [0, 17])
    def test_keep_outside_the_block_is_rejected(self, keep: int) -> None:
        with pytest.raises(ValueError, match="keep"):
            generate(tiny_model(block_size=16), torch.tensor([[1]]), 3, SamplingParams(), keep=keep)

    def test_empty_prompt_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="non-empty"):
            generate(tiny_model(), torch.empty((1, 0), dtype=torch.long), 3, SamplingParams())

    @pytest.mark.parametrize("shape", [(3,), (1, 1, 3)])
    def test_a_prompt_that_is_not_batch_by_time_is_rejected(self, shape: tuple[int, ...]) -> None:
        with pytest.raises(ValueError, match=r"\(B, T\) tensor"):
            generate(tiny_model(), torch.ones(shape, dtype=torch.long), 3, SamplingParams())

    def test_options_are_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            # The point: generator (like every option) is keyword-only.
            generate(tiny_model(), torch.tensor([[1]]), 3, SamplingParams(), None)  # type: ignore[call-arg]

    def test_vocab_size_keeps_draws_among_the_tokenizers_ids(self) -> None:
        model = tiny_model(vocab_size=29)
        params = SamplingParams(temperature=0.0)
        unrestricted = generate(model, torch.tensor([[1, 2]]), 20, params)
        assert max(ids(unrestricted[0, 2:])) >= 8  # the model on its own picks ids past 8
        restricted = generate(model, torch.tensor([[1, 2]]), 20, params, vocab_size=8)
        assert max(ids(restricted[0, 2:])) < 8

    def test_the_cache_takes_the_models_dtype_unless_told(self, monkeypatch: pytest.MonkeyPatch) -> None:
        made: list[torch.dtype] = []

        class RecordingCache(KVCache):
            def __init__(
                self,
                batch: int,
                config: GPTConfig,
                device: torch.device,
                dtype: torch.dtype,
                capacity: int | None = None,
            ) -> None:
                made.append(dtype)
                super().__init__(batch, config, device, dtype, capacity)

        def autocast() -> torch.autocast:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)

        monkeypatch.setattr("ml_playground.generate.KVCache", RecordingCache)
        greedy = SamplingParams(temperature=0.0)
        generate(tiny_model().double(), torch.tensor([[1]]), 2, greedy)
        generate(tiny_model(), torch.tensor([[1]]), 2, greedy, cache_dtype=torch.bfloat16, autocast=autocast)
        assert made == [torch.float64, torch.bfloat16]
