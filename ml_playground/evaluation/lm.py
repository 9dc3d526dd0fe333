"""lm-evaluation-harness's `LM` interface over our GPT, our KV-cache generation and the dataset's
tokenizer, so lm-eval's own evaluator scores every model the playground trains.

Requests are scored as lm-eval's `hf` model scores them (the reference the tests compare with):
a context and continuation are encoded together and split (`TemplateLM._encode_pair`), the input
keeps the last block_size + 1 tokens, and a document's rolling log-likelihood is the sum over
lm-eval's disjoint windows of block_size predictions, the first one conditioned on the prefix
token. That token is the tokenizer's end-of-text token; a char vocabulary has none, and a
newline (a text's natural start in the line-based corpora) stands in for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ml_playground.errors import DataError
from ml_playground.generate import SamplingParams, generate
from ml_playground.model import GPT
from ml_playground.runtime import Runtime
from ml_playground.tokenizers import Tokenizer

# Tokens generated per call of `generate` before the stop strings are looked for.
GENERATION_CHUNK = 32
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's `hf` model's default

# (context ids, continuation ids): the continuation's tokens are scored.
Pair = tuple[list[int], list[int]]


def prefix_token(tokenizer: Tokenizer) -> int:
    """What a text's first token is conditioned on: end-of-text, else a newline."""
    if tokenizer.eot_token is not None:
        return tokenizer.eot_token
    try:
        ids = tokenizer.encode("\n")
    except DataError:
        ids = []
    if len(ids) != 1:
        raise DataError(
            f"the {tokenizer.kind} tokenizer has no end-of-text token and no newline token: "
            "nothing to condition a text's first token on"
        )
    return ids[0]


class PlaygroundLM(TemplateLM):  # type: ignore[misc]  # lm_eval ships no type information
    """Our GPT (eval mode, on `runtime`'s device) as an lm-eval model; `batch_size` sequences per forward."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, runtime: Runtime, batch_size: int) -> None:
        super().__init__()
        self.model = model
        self.codec = tokenizer
        self.runtime = runtime
        self.batch_size = batch_size
        self._prefix = prefix_token(tokenizer)

    @property
    def eot_token_id(self) -> int:
        return self._prefix

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.codec.encode(string)

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        return self.score([(context, continuation) for _, context, continuation in requests])

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        texts: list[str] = [request.args[0] for request in requests]
        return [self.rolling_logprob(text) for text in texts]

    def rolling_logprob(self, text: str) -> float:
        """log P(text) in nats, every token scored once (lm-eval's rolling windows)."""
        ids = self.codec.encode(text)
        windows = get_rolling_token_windows(ids, self._prefix, self.max_length, 1)
        pairs: list[Pair] = [make_disjoint_window(window) for window in windows]
        return math.fsum(logprob for logprob, _ in self.score(pairs))

    @torch.inference_mode()
    def score(self, pairs: Sequence[Pair]) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) per pair.
        Longest first, in batches right-padded to their longest input (causal: padding after a
        sequence changes none of its logits)."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        inputs: list[tuple[list[int], int]] = []
        for context, continuation in pairs:
            whole = (context + continuation)[-(self.max_length + 1) :]
            inputs.append((whole, min(len(continuation), len(whole) - 1)))
        order = sorted(range(len(pairs)), key=lambda i: -len(inputs[i][0]))
        vocab = self.codec.vocab_size
        for first in range(0, len(order), self.batch_size):
            batch = order[first : first + self.batch_size]
            width = max(len(inputs[i][0]) - 1 for i in batch)
            idx = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                tokens = inputs[i][0][:-1]
                idx[row, : len(tokens)] = torch.tensor(tokens)
            with self.runtime.autocast():
                logits = self.model(idx.to(self.runtime.device)).logits  # (B, T, vocab_size)
            logprobs = F.log_softmax(logits[..., :vocab].float(), dim=-1).cpu()
            for row, i in enumerate(batch):
                whole, count = inputs[i]
                end = len(whole) - 1
                targets = torch.tensor(whole[end - count + 1 :])  # (count,)
                rows = logprobs[row, end - count : end]  # (count, vocab)
                picked = rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                results[i] = (float(picked.double().sum()), bool((rows.argmax(-1) == targets).all()))
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        texts: list[str] = []
        for request in requests:
            context, gen_kwargs = cast("tuple[str, dict[str, Any]]", request.args)
            texts.append(self.complete(context, gen_kwargs))
        return texts

    def complete(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """The text generated after `context` up to the first stop string (`until`, and the
        end-of-text token's text) or `max_gen_toks` tokens. The context is kept whole and slides
        through the block as the sampler's does (lm-eval's `hf` model instead drops its start to
        leave max_gen_toks free; the two agree while context and generation fit in block_size)."""
        kwargs = dict(gen_kwargs)
        until_value: str | list[str] = kwargs.pop("until", None) or []
        until = [until_value] if isinstance(until_value, str) else list(until_value)
        if self.codec.eot_token is not None:
            until.append(self.codec.decode([self.codec.eot_token]))
        max_new = int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0)) if do_sample else 0.0
        params = SamplingParams(temperature=temperature, top_k=None, top_p=None)
        prompt = self.codec.encode(context) or [self._prefix]  # cropped to block_size as it grows, as the sampler does
        produced: list[int] = []
        text = ""
        while len(produced) < max_new:
            sequence = torch.tensor([prompt + produced], dtype=torch.long, device=self.runtime.device)
            steps = min(GENERATION_CHUNK, max_new - len(produced))
            out = generate(
                self.model,
                sequence,
                steps,
                params,
                vocab_size=self.codec.vocab_size,
                cache_dtype=self.runtime.torch_dtype,
                autocast=self.runtime.autocast,
            )
            produced += [int(t) for t in out[0, sequence.size(1) :]]
            text = self.codec.decode(produced)
            if any(stop in text for stop in until):
                break
        cut = min((text.index(stop) for stop in until if stop in text), default=len(text))
        return text[:cut]


@dataclass(frozen=True, slots=True)
class BitsPerByte:
    """A text's bits per byte under a model: comparable across tokenizers."""

    bits_per_byte: float
    nats: float  # -log P(text)
    tokens: int
    bytes: int


def bits_per_byte(lm: PlaygroundLM, text: str) -> BitsPerByte:
    """Sum of the tokens' negative log-likelihoods (nats, lm-eval's rolling windows of block_size
    with the prefix token before the first) / ln 2 / the text's UTF-8 bytes."""
    size = len(text.encode("utf-8"))
    if size == 0:
        raise DataError("bits per byte: the text is empty")
    nats = -lm.rolling_logprob(text)
    tokens = len(lm.codec.encode(text))
    return BitsPerByte(bits_per_byte=nats / math.log(2) / size, nats=nats, tokens=tokens, bytes=size)
