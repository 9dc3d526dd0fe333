"""PlaygroundLM against direct computations on the same tiny GPT: scores of a single forward,
bits per byte over rolling windows, generation equal to a full-recompute greedy decode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ml_playground.config import GPTConfig
from ml_playground.errors import DataError
from ml_playground.evaluation.lm import PlaygroundLM, bits_per_byte, prefix_token
from ml_playground.model import GPT
from ml_playground.runtime import resolve_runtime
from ml_playground.tokenizers import CharTokenizer, TiktokenTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
BLOCK = 16


def tiny_lm(batch_size: int = 4, text: str = TEXT, block: int = BLOCK) -> PlaygroundLM:
    tokenizer = CharTokenizer(sorted(set(text)))
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=block, vocab_size=tokenizer.vocab_size)
    model = GPT(config).eval()
    with torch.no_grad():  # logits far from flat, so that every position's choice matters
        model.lm_head.weight.mul_(40)
    return PlaygroundLM(model, tokenizer, resolve_runtime("cpu", "float32"), batch_size)


def logprobs(lm: PlaygroundLM, ids: list[int]) -> torch.Tensor:
    """(T, vocab) log-probabilities of one plain forward of `ids`."""
    with torch.no_grad():
        return F.log_softmax(lm.model(torch.tensor([ids])).logits[0].double(), dim=-1)


def test_prefix_token_is_end_of_text_else_a_newline() -> None:
    assert prefix_token(TiktokenTokenizer("gpt2")) == 50256
    char = CharTokenizer(sorted(set(TEXT)))
    assert prefix_token(char) == char.encode("\n")[0]
    with pytest.raises(DataError, match="no end-of-text token and no newline"):
        prefix_token(CharTokenizer(["a", "b"]))


def test_a_continuation_scores_its_tokens_after_the_context() -> None:
    lm = tiny_lm()
    context, continuation = lm.tok_encode("All:\nSpeak,"), lm.tok_encode(" we")
    rows = logprobs(lm, context + continuation)
    expected = sum(float(rows[len(context) - 1 + i, token]) for i, token in enumerate(continuation))
    greedy = all(int(rows[len(context) - 1 + i].argmax()) == t for i, t in enumerate(continuation))
    [(score, is_greedy)] = lm.score([(context, continuation)])
    assert score == pytest.approx(expected, abs=1e-5)
    assert is_greedy == greedy
    # The model's own greedy continuation is recognised as greedy.
    ids = list(context)
    for _ in range(3):
        ids.append(int(logprobs(lm, ids)[-1].argmax()))
    [(_, is_greedy)] = lm.score([(context, ids[len(context) :])])
    assert is_greedy


def test_an_input_past_block_size_keeps_its_last_block_size_tokens() -> None:
    lm = tiny_lm()
    ids = lm.tok_encode(TEXT)[: BLOCK + 10]
    context, continuation = ids[:-3], ids[-3:]
    window = ids[-(BLOCK + 1) : -1]
    rows = logprobs(lm, window)
    expected = sum(float(rows[BLOCK - 3 + i, token]) for i, token in enumerate(continuation))
    [(score, _)] = lm.score([(context, continuation)])
    assert score == pytest.approx(expected, abs=1e-5)


def test_batches_of_several_lengths_score_as_one_at_a_time() -> None:
    ids = tiny_lm().tok_encode(TEXT)
    pairs = [(ids[:n], ids[n : n + 4]) for n in (1, 5, 9, 14, 30)]
    alone = tiny_lm(batch_size=1).score(pairs)
    batched = tiny_lm(batch_size=3).score(pairs)
    for (a, greedy_a), (b, greedy_b) in zip(alone, batched, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
        assert greedy_a == greedy_b


def test_bits_per_byte_sums_every_token_once_over_rolling_windows() -> None:
    text = TEXT + "Café\n"  # a two-byte character: bytes, not characters, divide
    lm = tiny_lm(text=text)
    ids = lm.tok_encode(text)
    assert len(ids) > 3 * BLOCK
    # lm-eval's windows: the prefix token and the first block_size - 1 tokens predict the first
    # block_size; each later window predicts the next tokens from the block_size tokens before them.
    nats = -sum(float(logprobs(lm, [lm.eot_token_id, *ids[: BLOCK - 1]])[i, t]) for i, t in enumerate(ids[:BLOCK]))
    done = BLOCK
    while done < len(ids):
        end = min(done + BLOCK, len(ids))
        rows = logprobs(lm, ids[end - BLOCK - 1 : end - 1])
        nats -= sum(float(rows[BLOCK - (end - done) + i, t]) for i, t in enumerate(ids[done:end]))
        done = end
    measured = bits_per_byte(lm, text)
    assert measured.bytes == len(text.encode("utf-8")) == len(text) + 1
    assert measured.tokens == len(ids)
    assert measured.nats == pytest.approx(nats, rel=1e-6)
    assert measured.bits_per_byte == pytest.approx(nats / math.log(2) / measured.bytes, rel=1e-6)
    with pytest.raises(DataError, match="empty"):
        bits_per_byte(lm, "")


def test_generation_is_the_greedy_decode_cut_at_the_first_stop_string() -> None:
    lm = tiny_lm()
    context = "All:\nSpeak,"
    ids = lm.tok_encode(context)
    for _ in range(40):  # full recompute, no KV cache, cropped to block_size
        ids.append(int(logprobs(lm, ids[-BLOCK:])[-1].argmax()))
    greedy = lm.codec.decode(ids[len(lm.tok_encode(context)) :])
    assert lm.complete(context, {"until": [], "max_gen_toks": 40}) == greedy
    stop = greedy[5:7]
    assert lm.complete(context, {"until": [stop], "max_gen_toks": 40}) == greedy[: greedy.index(stop)]
    assert lm.complete(context, {"until": "#", "max_gen_toks": 3}) == greedy[:3]  # one string; max_gen_toks
