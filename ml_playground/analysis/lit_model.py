"""LIT model wrapper over our GPT. Runs only inside the LIT environment (lit_nlp/.venv).

Input: `text`. Outputs, per example:
- `continuation` (GeneratedText): the sampler's continuation of the text ([sample.sample] settings);
- `tokens` (Tokens): the text's tokens (its last block_size tokens when longer);
- `pred_tokens` (TokenTopKPreds): after each token, the top-k next tokens with probabilities;
- `token_loss` (TokenScores): loss of each token given the ones before it (0.0 for the first);
- `mean_loss`, `perplexity` (Scalar): over the predicted tokens;
- `layer_<i>/attention` (AttentionHeads): (n_head, T, T) causal attention of each layer;
- `pooled_embedding` (Embeddings): mean final hidden state, for LIT's projector (PCA/UMAP).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from ml_playground.analysis.introspect import SequenceReport, inspect_sequence
from ml_playground.config import SampleSettings
from ml_playground.generate import generate
from ml_playground.model import GPT
from ml_playground.runtime import Runtime
from ml_playground.sample import context_keep, sampling_params
from ml_playground.tokenizers import Tokenizer

TOP_K = 10


class GPTLitModel(lit_model.Model):
    """A trained ml-playground GPT."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        settings: SampleSettings,
        runtime: Runtime,
        *,
        seed: int,
        checkpoint: Path,
    ):
        self._model = model.eval()
        self._tokenizer = tokenizer
        self._settings = settings
        self._params = sampling_params(settings)
        self._keep = context_keep(settings, model)
        self._runtime = runtime
        self._seed = seed
        self._checkpoint = checkpoint

    @classmethod
    def init_spec(cls) -> lit_types.Spec | None:
        return None  # built from a checkpoint by the server, not from the UI

    def description(self) -> str:
        cfg = self._model.config
        return (
            f"GPT {cfg.n_layer}x{cfg.n_head}x{cfg.n_embd} ({self._tokenizer.kind} tokens, vocab {cfg.real_vocab_size})"
            f" from {self._checkpoint}"
        )

    def input_spec(self) -> lit_types.Spec:
        return {"text": lit_types.TextSegment()}

    def output_spec(self) -> lit_types.Spec:
        spec: lit_types.Spec = {
            "continuation": lit_types.GeneratedText(),
            "tokens": lit_types.Tokens(parent="text", token_prefix=None),
            "pred_tokens": lit_types.TokenTopKPreds(align="tokens"),
            "token_loss": lit_types.TokenScores(align="tokens"),
            "mean_loss": lit_types.Scalar(min_val=0.0, max_val=10.0),
            "perplexity": lit_types.Scalar(min_val=1.0, max_val=float(self._model.config.real_vocab_size)),
            "pooled_embedding": lit_types.Embeddings(),
        }
        for layer in range(self._model.config.n_layer):
            spec[f"layer_{layer}/attention"] = lit_types.AttentionHeads(align_in="tokens", align_out="tokens")
        return spec

    def predict(self, inputs: Iterable[lit_types.JsonDict], **kw: Any) -> list[lit_types.JsonDict]:
        return [self._predict_one(str(example["text"])) for example in inputs]

    def _encode(self, text: str) -> list[int]:
        ids = self._tokenizer.encode(text)
        if not ids:
            raise ValueError("the text is empty: type at least one token")
        return ids

    def continuation(self, ids: list[int]) -> list[int]:
        """New token ids after `ids`, drawn as `run_sampling` draws its first sample.

        The generator is seeded per call, so the same text always gets the same continuation.
        """
        generator = torch.Generator().manual_seed(self._seed)
        prompt = torch.tensor([ids], dtype=torch.long, device=self._runtime.device)
        out = generate(
            self._model,
            prompt,
            self._settings.max_new_tokens,
            self._params,
            generator=generator,
            keep=self._keep,
            vocab_size=self._tokenizer.vocab_size,
            cache_dtype=self._runtime.torch_dtype,
            autocast=self._runtime.autocast,
        )
        return cast("list[int]", out[0, len(ids) :].tolist())

    def _predict_one(self, text: str) -> dict[str, Any]:
        ids = self._encode(text)
        with self._runtime.autocast():
            report = inspect_sequence(
                self._model, ids[-self._model.config.block_size :], TOP_K, vocab_size=self._tokenizer.vocab_size
            )
        return {"continuation": self._tokenizer.decode(self.continuation(ids)), **self._views(report)}

    def _token_text(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])

    def _views(self, report: SequenceReport) -> dict[str, Any]:
        top_ids = cast("list[list[int]]", report.top_ids.tolist())
        top_probs = cast("list[list[float]]", report.top_probs.tolist())
        views: dict[str, Any] = {
            "tokens": [self._token_text(i) for i in report.ids],
            "pred_tokens": [
                [(self._token_text(i), p) for i, p in zip(ids, probs, strict=True)]
                for ids, probs in zip(top_ids, top_probs, strict=True)
            ],
            "token_loss": [0.0, *cast("list[float]", report.token_losses.tolist())],
            "mean_loss": report.mean_loss,
            "perplexity": report.perplexity,
            "pooled_embedding": report.pooled.numpy().astype(np.float32),
        }
        for layer, heads in enumerate(report.attention):
            views[f"layer_{layer}/attention"] = heads.numpy().astype(np.float32)
        return views
