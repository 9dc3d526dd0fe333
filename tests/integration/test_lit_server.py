"""LIT end to end: train a tiny model with the trainer, serve it with `ml-playground lit`, query
LIT over HTTP.

The command creates the LIT environment (lit_nlp/.venv) on first use, as `make lit` does, and
runs the real LIT server on a free loopback port. It is stopped by PID (SIGTERM, which the
launcher passes on to the server); every wait is bounded.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml_playground import registry
from ml_playground.config_loader import load_experiment_config, require
from ml_playground.data.meta import DatasetMeta, write_meta
from ml_playground.generate import generate
from ml_playground.model import GPT
from ml_playground.runtime import Runtime
from ml_playground.sample import load_model_for_inference, run_sampling, sampling_params
from ml_playground.tokenizers import CharTokenizer
from ml_playground.train.loop import train
from tests.support.ports import reserved_port

pytestmark = pytest.mark.slow

CORPUS = "the quick brown fox jumps over the lazy dog. " * 40
PROMPT = "the quick "
MAX_NEW_TOKENS = 12
BLOCK_SIZE = 32
N_LAYER = 2
N_HEAD = 2
N_EMBD = 32
TOP_K = 10  # lit_model.TOP_K
STARTUP_TIMEOUT_S = 300.0  # includes creating the LIT environment on first use
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Served:
    url: str
    config_path: Path
    tokenizer: CharTokenizer
    model: GPT


def _prepare_dataset(dataset_dir: Path) -> CharTokenizer:
    tokenizer = CharTokenizer(sorted(set(CORPUS)))
    ids = np.asarray(tokenizer.encode(CORPUS), dtype=np.uint16)
    split = int(len(ids) * 0.8)
    dataset_dir.mkdir(parents=True)
    ids[:split].tofile(dataset_dir / "train.bin")
    ids[split:].tofile(dataset_dir / "val.bin")
    meta = DatasetMeta(
        kind="char",
        vocab_size=tokenizer.vocab_size,
        dtype="uint16",
        itos=tokenizer.itos,
        train_tokens=split,
        val_tokens=len(ids) - split,
    )
    write_meta(dataset_dir / "meta.json", meta)
    return tokenizer


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "lit.toml"
    path.write_text(
        f"""
[train.data]
dataset_dir = "{tmp_path / "data"}"
block_size = {BLOCK_SIZE}
batch_size = 8

[train.model]
n_layer = {N_LAYER}
n_head = {N_HEAD}
n_embd = {N_EMBD}
block_size = {BLOCK_SIZE}

[train.optim]
learning_rate = 3e-3

[train.runtime]
out_dir = "{tmp_path / "out"}"
max_iters = 60
eval_interval = 30
eval_iters = 5

[sample.runtime]
out_dir = "{tmp_path / "out"}"

[sample.sample]
start = "{PROMPT}"
max_new_tokens = {MAX_NEW_TOKENS}
temperature = 0.0
""",
        encoding="utf-8",
    )
    return path


def _train_tiny(config_path: Path) -> GPT:
    """Train with the trainer (`train`, as `make train` does); the model LIT must serve is
    the one in the checkpoint it wrote, loaded the way sampling loads it."""
    cfg = require(load_experiment_config(config_path).train, config_path, "train")
    train(cfg)
    model, _, path = load_model_for_inference(cfg.runtime.out_dir, Runtime(torch.device("cpu"), "float32"))
    assert path.name == "ckpt_best.pt"
    return model


def _request(url: str, body: object | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read().decode("utf-8"))


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"LIT server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            _request(f"{url}/get_info")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"LIT server did not answer within {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp_path = tmp_path_factory.mktemp("lit")
    tokenizer = _prepare_dataset(tmp_path / "data")
    config_path = _write_config(tmp_path)
    model = _train_tiny(config_path)
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "ml_playground.cli", "lit", registry.names()[0], "--exp-config", str(config_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: one thread, no contention on a busy machine
    with reserved_port() as port, log_path.open("wb") as log:  # held until the server listens on it
        process = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_serving(url, process, log_path)
        except BaseException:
            process.kill()
            process.wait(timeout=30)
            raise
    try:
        yield Served(url=url, config_path=config_path, tokenizer=tokenizer, model=model)
    finally:
        process.terminate()  # by PID; the launcher stops the server it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == 0, log_path.read_text()[-4000:]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The server process is gone: nothing listens on its port (closed connections may linger).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


@pytest.fixture(scope="module")
def examples(served: Served) -> list[dict[str, Any]]:
    indexed: list[dict[str, Any]] = _request(f"{served.url}/get_dataset?dataset_name=experiment")
    return indexed


def _preds(served: Served, examples: list[dict[str, Any]], lit_type: str) -> list[dict[str, Any]]:
    query = f"model=gpt&dataset_name=experiment&requested_types={lit_type}"
    preds: list[dict[str, Any]] = _request(f"{served.url}/get_preds?{query}", {"inputs": examples})
    assert len(preds) == len(examples)
    return preds


def test_info_describes_model_and_dataset(served: Served) -> None:
    info = _request(f"{served.url}/get_info")
    output = info["models"]["gpt"]["spec"]["output"]
    expected = {
        "continuation": "GeneratedText",
        "tokens": "Tokens",
        "pred_tokens": "TokenTopKPreds",
        "token_loss": "TokenScores",
        "mean_loss": "Scalar",
        "perplexity": "Scalar",
        "pooled_embedding": "Embeddings",
        **{f"layer_{i}/attention": "AttentionHeads" for i in range(N_LAYER)},
    }
    assert {key: spec["__name__"] for key, spec in output.items()} == expected
    # The model's rows are padded (default vocab_multiple 64); LIT shows the tokenizer's vocabulary.
    assert (served.model.config.vocab_size, served.model.config.real_vocab_size) == (64, served.tokenizer.vocab_size)
    assert output["perplexity"]["max_val"] == served.tokenizer.vocab_size
    assert f"vocab {served.tokenizer.vocab_size})" in info["models"]["gpt"]["description"]
    assert info["models"]["gpt"]["spec"]["input"]["text"]["__name__"] == "TextSegment"
    assert set(info["datasets"]["experiment"]["spec"]) == {"text", "source"}


def test_dataset_holds_prompt_then_validation_snippets(served: Served, examples: list[dict[str, Any]]) -> None:
    data = [example["data"] for example in examples]
    assert (data[0]["text"], data[0]["source"]) == (PROMPT, "prompt")
    assert all(d["_id"] == example["id"] for d, example in zip(data, examples, strict=True))
    snippets = [d["text"] for d in data[1:]]
    assert snippets, "no validation snippets"
    assert all(d["source"] == "validation" for d in data[1:])
    val_ids = np.fromfile(served.config_path.parent / "data" / "val.bin", dtype=np.uint16)
    val_text = served.tokenizer.decode([int(i) for i in val_ids])
    assert all(len(text) == BLOCK_SIZE and text in val_text for text in snippets)


def test_greedy_continuation_equals_the_sampler(served: Served, examples: list[dict[str, Any]]) -> None:
    preds = _preds(served, examples, "GeneratedText")
    assert all(len(served.tokenizer.encode(p["continuation"])) == MAX_NEW_TOKENS for p in preds)
    # The configured prompt, through `make sample`'s own entry point.
    sample = require(load_experiment_config(served.config_path).sample, served.config_path, "sample")
    assert run_sampling(sample) == [PROMPT + preds[0]["continuation"]]
    # Every snippet, through the sampler's generation pipeline with the same settings.
    for example, pred in zip(examples[1:], preds[1:], strict=True):
        prompt = torch.tensor([served.tokenizer.encode(example["data"]["text"])])
        tokens = generate(served.model, prompt, MAX_NEW_TOKENS, sampling_params(sample.sample))
        assert pred["continuation"] == served.tokenizer.decode([int(t) for t in tokens[0, prompt.size(1) :]])


def test_per_token_views_have_the_model_shapes_and_values(served: Served, examples: list[dict[str, Any]]) -> None:
    preds = {t: _preds(served, examples, t) for t in ("Tokens", "TokenTopKPreds", "TokenScores", "Scalar")}
    for i, example in enumerate(examples):
        ids = served.tokenizer.encode(example["data"]["text"])
        tokens = preds["Tokens"][i]["tokens"]
        assert tokens == [served.tokenizer.decode([t]) for t in ids]
        top = preds["TokenTopKPreds"][i]["pred_tokens"]
        assert len(top) == len(ids)
        assert all(token in served.tokenizer.itos for row in top for token, _ in row)  # no padding ids
        assert all(len(row) == TOP_K for row in top)
        probs = [[p for _, p in row] for row in top]
        assert all(row == sorted(row, reverse=True) and 0 < sum(row) <= 1 + 1e-5 for row in probs)
        idx = torch.tensor([ids])
        with torch.no_grad():
            logits = served.model(idx).logits[0]
        expected_top = [served.tokenizer.decode([int(t)]) for t in logits[-1].argmax(dim=-1, keepdim=True)]
        assert top[-1][0][0] == expected_top[0]
        losses = preds["TokenScores"][i]["token_loss"]
        assert len(losses) == len(ids)
        assert losses[0] == 0.0
        with torch.no_grad():
            loss = served.model(idx[:, :-1], idx[:, 1:]).loss
        assert loss is not None
        assert math.isclose(sum(losses[1:]) / (len(ids) - 1), float(loss), rel_tol=1e-4)
        scalars = preds["Scalar"][i]
        assert math.isclose(scalars["mean_loss"], float(loss), rel_tol=1e-4)
        assert math.isclose(scalars["perplexity"], math.exp(float(loss)), rel_tol=1e-4)


def test_attention_and_embedding_shapes(served: Served, examples: list[dict[str, Any]]) -> None:
    attention = _preds(served, examples, "AttentionHeads")
    embeddings = _preds(served, examples, "Embeddings")
    for i, example in enumerate(examples):
        t = len(served.tokenizer.encode(example["data"]["text"]))
        for layer in range(N_LAYER):
            heads = np.asarray(attention[i][f"layer_{layer}/attention"])
            assert heads.shape == (N_HEAD, t, t)
            np.testing.assert_allclose(heads.sum(axis=-1), 1.0, atol=1e-4)  # rows are distributions
            assert np.allclose(np.triu(heads, k=1), 0.0)  # causal: nothing attends to the future
        assert np.asarray(embeddings[i]["pooled_embedding"]).shape == (N_EMBD,)
