"""Bits per byte: a uniform model's value is log2(vocab) x tokens / bytes, computed by hand here for
a char, a GPT-2 BPE and a trained BPE tokenizer on the same text; training's evaluation, its log,
TensorBoard and the checkpoint report it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml_playground.config import GPTConfig
from ml_playground.data.batches import BatchSource
from ml_playground.data.meta import read_meta
from ml_playground.data.prepare import TokenizerChoice, prepare_corpus
from ml_playground.model import GPT
from ml_playground.runtime import Runtime
from ml_playground.sample import load_model_for_inference
from ml_playground.tokenizers import CharTokenizer, TiktokenTokenizer, Tokenizer, tokenizer_from_meta, train_bpe
from ml_playground.train.checkpoint import load_checkpoint
from ml_playground.train.distributed import DistInfo
from ml_playground.train.loop import build_loop, evaluate, train
from ml_playground.train.metrics import bits_per_byte, text_bits_per_byte
from ml_playground.train.parallel import Parallel
from tests.support.tiny_training import TEXT, read_scalars, tiny_train_table, train_config

SAMPLE = "Größe und Übermaß, ROMEO: But, soft! what light through yonder window breaks? 漢字\n" * 3


def uniform_model(vocab_size: int, block_size: int = 32) -> GPT:
    """Zero output head: every id equally likely, a loss of ln(vocab_size) per token."""
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=block_size, vocab_size=vocab_size))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def tokenizers_on(text: str) -> list[Tokenizer]:
    return [
        CharTokenizer(sorted(set(text))),
        TiktokenTokenizer("gpt2"),
        train_bpe([TEXT, text], vocab_size=300, max_bytes=1 << 20),
    ]


@pytest.mark.parametrize("which", range(3), ids=["char", "gpt2", "bpe"])
def test_a_uniform_model_by_hand(which: int) -> None:
    tokenizer = tokenizers_on(SAMPLE)[which]
    ids = tokenizer.encode(SAMPLE)
    # Every id but the first is predicted; those ids hold the text but the first id's bytes.
    predicted_bytes = len(SAMPLE.encode("utf-8")) - len(tokenizer.decode(ids[:1]).encode("utf-8"))
    expected = (len(ids) - 1) * math.log2(tokenizer.vocab_size) / predicted_bytes
    measured = text_bits_per_byte(uniform_model(tokenizer.vocab_size), tokenizer, SAMPLE, device=torch.device("cpu"))
    assert measured == pytest.approx(expected, rel=1e-5)


def test_bits_per_byte_formula() -> None:
    assert bits_per_byte(math.log(2) * 3, 1.5) == pytest.approx(2.0)
    assert math.isnan(bits_per_byte(1.0, 0.0))


def prepared(tmp_path: Path, choice: TokenizerChoice) -> Path:
    (tmp_path / "in.txt").write_text(TEXT * 4 + SAMPLE, encoding="utf-8")
    prepare_corpus(tmp_path / "in.txt", tmp_path / "ds", tokenizer=choice, val_fraction=0.2)
    return tmp_path / "ds"


@pytest.mark.parametrize(
    "choice", [TokenizerChoice(kind="char"), TokenizerChoice(kind="bpe", vocab_size=320)], ids=["char", "bpe"]
)
def test_evaluation_reports_bits_per_byte(tmp_path: Path, choice: TokenizerChoice) -> None:
    dataset = prepared(tmp_path, choice)
    meta = read_meta(dataset / "meta.json")
    cfg = train_config(tiny_train_table(dataset, tmp_path / "out"))
    batches = BatchSource(
        train_files=[dataset / "train.bin"],
        val_files=[dataset / "val.bin"],
        token_dtype=meta.numpy_dtype,
        batch_size=2,
        block_size=16,
        device=torch.device("cpu"),
    )
    runtime = Runtime(torch.device("cpu"), "float32")
    model = uniform_model(meta.vocab_size)
    loop = build_loop(cfg, Parallel(model), batches, runtime, dist=DistInfo(), dataset_meta=meta.to_dict())
    losses = evaluate(loop)
    lengths = tokenizer_from_meta(meta).token_bytes()
    for split in ("train", "val"):
        targets = np.concatenate([y.numpy().ravel() for _, y in batches.eval_batches(split, cfg.runtime.eval_iters)])
        by_hand = math.log2(meta.vocab_size) * targets.size / int(lengths[targets].sum())
        assert losses[split] == pytest.approx(math.log(meta.vocab_size), rel=1e-5)
        assert losses[f"{split}_bpb"] == pytest.approx(by_hand, rel=1e-5)


def test_training_logs_and_saves_bits_per_byte(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset = prepared(tmp_path, TokenizerChoice(kind="bpe", vocab_size=320))
    table: dict[str, Any] = tiny_train_table(dataset, tmp_path / "out")
    cfg = train_config(table)
    with caplog.at_level("INFO", logger="ml_playground"):
        result = train(cfg)
    assert result.last_eval is not None
    assert "val_bpb" in result.last_eval
    assert any("(bpb: train " in record.getMessage() for record in caplog.records)
    scalars = read_scalars(cfg.runtime.out_dir / "logs" / "tb")
    assert scalars["val/bpb"][-1][1] == pytest.approx(result.last_eval["val_bpb"], rel=1e-6)  # float32 there
    assert "eval/train_bpb" in scalars
    checkpoint = load_checkpoint(cfg.runtime.out_dir / "ckpt_last.pt")
    assert checkpoint.evaluation == result.last_eval
    assert checkpoint.best_val_loss <= result.last_eval["val"]  # the best metric stays the loss
    # The sampler takes the trained BPE from the checkpoint alone.
    (dataset / "tokenizer.json").unlink()
    _model, tokenizer, _path = load_model_for_inference(cfg.runtime.out_dir, Runtime(torch.device("cpu"), "float32"))
    assert tokenizer.kind == "bpe"
    assert tokenizer.decode(tokenizer.encode(SAMPLE)) == SAMPLE
