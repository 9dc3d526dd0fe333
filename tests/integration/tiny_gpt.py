"""Tiny GPTs for interop tests: a few AdamW steps on a small corpus so the logits are not flat."""

from __future__ import annotations

from typing import Any

import torch

from ml_playground.config import GPTConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.model import GPT
from ml_playground.tokenizers import CharTokenizer, HuggingFaceTokenizer, TiktokenTokenizer, meta_of, train_bpe
from ml_playground.train.modes import padded_vocab_size

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n\n"
)


def train_briefly(model: GPT, ids: list[int], steps: int, seed: int = 0) -> GPT:
    """`steps` AdamW steps on random windows of `ids`; returns the model in eval mode."""
    torch.manual_seed(seed)
    data = torch.tensor(ids)
    window = min(32, len(ids) - 1, model.config.block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(len(data) - window, (8,))
        x = torch.stack([data[s : s + window] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + window] for s in starts])
        loss = model(x, y).loss
        assert loss is not None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# Llama's options: RoPE (a base other than the default, so that it must be carried over), RMSNorm
# (eps 1e-6, Llama's), SwiGLU with its own width, no biases; 4 query heads of size 8.
LLAMA: dict[str, Any] = {
    "position": "rope",
    "rope_theta": 500.0,
    "norm": "rmsnorm",
    "norm_eps": 1e-6,
    "mlp": "swiglu",
    "mlp_hidden": 80,
    "n_head": 4,
    "bias": False,
}


def llama(**changes: Any) -> dict[str, Any]:
    """LLAMA with some options changed (n_kv_head, tie_embeddings, qk_norm, ...)."""
    return LLAMA | changes


def tiny_config(vocab: int, vocab_multiple: int, bias: bool, **options: Any) -> GPTConfig:
    """2 layers, 32 wide; `vocab` tokens in rows padded to a multiple of `vocab_multiple`;
    `options` are further GPTConfig fields (they override the defaults here, `bias` included)."""
    rows = padded_vocab_size(vocab, vocab_multiple)
    fields: dict[str, Any] = {
        "block_size": 96,
        "vocab_size": rows,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "bias": bias,
    }
    fields.update(options)
    return GPTConfig(**fields, real_vocab_size=vocab)


def char_model(
    steps: int = 60, bias: bool = True, vocab_multiple: int = 1, **options: Any
) -> tuple[GPT, CharTokenizer, DatasetMeta]:
    itos = sorted(set(CORPUS))
    tokenizer = CharTokenizer(itos)
    meta = DatasetMeta(kind="char", vocab_size=len(itos), dtype="uint16", itos=itos)
    torch.manual_seed(0)
    model = GPT(tiny_config(len(itos), vocab_multiple, bias, **options))
    return train_briefly(model, tokenizer.encode(CORPUS), steps), tokenizer, meta


def gpt2_model(steps: int = 30, vocab_multiple: int = 1, **options: Any) -> tuple[GPT, TiktokenTokenizer, DatasetMeta]:
    tokenizer = TiktokenTokenizer("gpt2")
    meta = DatasetMeta(kind="tiktoken", vocab_size=50257, dtype="uint16", encoding="gpt2")
    torch.manual_seed(0)
    model = GPT(tiny_config(50257, vocab_multiple, options.pop("bias", False), **options))
    return train_briefly(model, tokenizer.encode(CORPUS * 3), steps), tokenizer, meta


def bpe_model(steps: int = 60, vocab: int = 320, **options: Any) -> tuple[GPT, HuggingFaceTokenizer, DatasetMeta]:
    """A byte-level BPE trained on CORPUS (with a special token besides <|endoftext|>) and a model on it."""
    tokenizer = train_bpe([CORPUS], vocab_size=vocab, special_tokens=["<|user|>"], max_bytes=1 << 20)
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab, 1, **({"bias": False} | options)))
    return train_briefly(model, tokenizer.encode(CORPUS * 3), steps), tokenizer, meta_of(tokenizer)


@torch.no_grad()
def greedy(model: GPT, ids: list[int], new_tokens: int) -> list[int]:
    """Our reference greedy decode (full recompute, no cache)."""
    out = list(ids)
    for _ in range(new_tokens):
        logits = model(torch.tensor([out])).logits
        out.append(int(logits[0, -1].argmax()))
    return out
