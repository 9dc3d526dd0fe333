"""[train.model] init_from: tiny GPT-2 and Llama models saved by transformers' own `save_pretrained`
load with transformers' logits, finetune every weight with the native loop (lower val loss), resume
without reading the source, export back (transformers and llama.cpp agree) and sample as they are;
under torchrun (DDP, FSDP) two ranks finetune a source like one rank with doubled accumulation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ml_playground.config import SampleConfig, SampleRuntimeConfig, SampleSettings
from ml_playground.data.meta import DatasetMeta
from ml_playground.data.prepare import TokenizerChoice, prepare_corpus
from ml_playground.errors import ConfigError, DataError, ExportError
from ml_playground.finetune.pretrained import Pretrained
from ml_playground.interop import hf
from ml_playground.interop.gguf import write_gguf
from ml_playground.interop.source import load_source, sample_source
from ml_playground.model import GPT
from ml_playground.train.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint
from ml_playground.train.loop import train
from tests.integration.test_ddp_torchrun import BLOCK, WINDOWS_PER_STEP
from tests.integration.test_gguf_llama_cpp import F32_BOUND, LlamaRun, our_logits
from tests.support.tiny_training import (
    TEXT,
    read_scalars,
    text_with_whole_steps,
    tiny_train_table,
    train_config,
    write_char_dataset,
)
from tests.support.torchrun import run as run_torchrun
from tests.support.torchrun import write_toml

pytestmark = pytest.mark.slow

KEY = "train.model.init_from"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach the hub; every source is a local directory


def char_meta(text: str = TEXT) -> DatasetMeta:
    chars = sorted(set(text))
    return DatasetMeta(kind="char", vocab_size=len(chars), dtype="uint16", itos=chars)


def hf_model(kind: str, vocab: int) -> Any:
    """A tiny random transformers model (GPT-2 with exact GELU, or Llama with GQA and an untied head)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        config: Any = GPT2Config(
            vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=2, activation_function="gelu"
        )
        gpt2: Any = GPT2LMHeadModel(config)
        return gpt2.eval()
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        tie_word_embeddings=False,
    )
    llama: Any = LlamaForCausalLM(config)
    return llama.eval()


def saved(tmp_path: Path, kind: str, meta: DatasetMeta) -> tuple[Path, Any]:
    """The model saved by transformers, with our char tokenizer beside it."""
    model = hf_model(kind, meta.vocab_size)
    folder = tmp_path / f"hf_{kind}"
    model.save_pretrained(folder)
    hf.write_tokenizer(folder, meta, 32)
    return folder, model


def logits_diff(ours: GPT, theirs: Any, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float((theirs(input_ids=ids).logits - ours(ids).logits).abs().max())


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_saved_transformers_model_loads_with_its_logits(tmp_path: Path, kind: str) -> None:
    meta = char_meta()
    folder, theirs = saved(tmp_path, kind, meta)
    source = load_source(str(folder), KEY)
    assert source.meta == meta
    ours = GPT(source.config)
    source.load_into(ours)
    ids = torch.randint(meta.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    assert logits_diff(ours.eval(), theirs, ids) <= 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_finetuning_from_a_source_trains_every_weight_resumes_and_exports(tmp_path: Path, kind: str) -> None:
    from transformers import AutoModelForCausalLM

    meta = write_char_dataset(tmp_path / "data")
    folder, _ = saved(tmp_path, kind, meta)
    out = tmp_path / "out"
    table = tiny_train_table(tmp_path / "data", out)
    table["model"] = {"init_from": str(folder), "dropout": 0.1}
    table["data"]["block_size"] = 32
    table["runtime"] |= {"max_iters": 8, "eval_interval": 8}
    result = train(train_config(table), Pretrained())

    last = load_checkpoint(out / LAST_NAME)
    source = load_source(str(folder), KEY)
    assert last.arch == source.config.replace(dropout=0.1)  # the source's architecture, dropout overridden
    start = GPT(source.config)
    source.load_into(start)
    assert all(not torch.equal(last.model[name], tensor) for name, tensor in start.state_dict().items())
    # The source's val loss at iter 0 first: the baseline the finetune is compared with.
    assert [step for step, _ in read_scalars(out / "logs" / "tb")["val/loss"]] == [0, 8]
    first_eval = _val_losses(out)[0]
    assert result.last_eval is not None
    assert result.last_eval["val"] < first_eval

    # ckpt_last.pt wins over init_from: the source is not read again (here it no longer exists).
    table["model"]["init_from"] = str(tmp_path / "gone")
    table["runtime"] |= {"max_iters": 10, "eval_interval": 10}
    assert train(train_config(table), Pretrained()).iter_num == 10

    best = load_checkpoint(out / BEST_NAME)
    model = GPT(best.arch)
    model.load_state_dict(best.model)
    hf.export_hf(best.model, best.arch, meta, tmp_path / "export")
    theirs: Any = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    theirs.eval()
    ids = torch.randint(meta.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    assert logits_diff(model.eval(), theirs, ids) <= 1e-4

    # llama.cpp (gpt2 / llama GGUF) computes the finetuned model too.
    write_gguf(tmp_path / "model.gguf", best.model, best.arch, meta, ftype="f32", name="tiny")
    llama_cpp = LlamaRun(tmp_path / "model.gguf", best.arch.block_size)
    window: list[int] = [int(token) for token in ids[0]]
    assert float(np.abs(llama_cpp.logits(window) - our_logits(model, window)).max()) <= F32_BOUND
    llama_cpp.close()


def _val_losses(out: Path) -> list[float]:
    return [value for _, value in read_scalars(out / "logs" / "tb")["val/loss"]]


def test_keys_that_contradict_the_source_fail_in_one_line_naming_both_values(tmp_path: Path) -> None:
    meta = write_char_dataset(tmp_path / "data")
    folder, _ = saved(tmp_path, "gpt2", meta)
    table = tiny_train_table(tmp_path / "data", tmp_path / "out")
    table["model"] = {"init_from": str(folder), "n_layer": 3, "mlp": "swiglu", "n_embd": 32, "dropout": 0.2}
    with pytest.raises(ConfigError) as info:
        train(train_config(table), Pretrained())
    message = str(info.value)
    assert "\n" not in message
    assert "train.model.n_layer = 3 (source: 2)" in message
    assert "train.model.mlp = 'swiglu' (source: 'gelu')" in message
    assert "n_embd" not in message  # an agreeing key is fine
    assert "dropout" not in message  # dropout overrides the source's


def test_a_dataset_with_another_tokenizer_is_refused(tmp_path: Path) -> None:
    write_char_dataset(tmp_path / "data", TEXT + "XYZ")
    folder, _ = saved(tmp_path, "gpt2", char_meta())
    table = tiny_train_table(tmp_path / "data", tmp_path / "out")
    table["model"] = {"init_from": str(folder)}
    with pytest.raises(DataError, match=r"init_from .* uses a char vocabulary of \d+ characters, but the dataset"):
        train(train_config(table), Pretrained())


def test_an_unsupported_architecture_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    folder, _ = saved(tmp_path, "gpt2", char_meta())
    config = (folder / "config.json").read_text(encoding="utf-8").replace('"gpt2"', '"mistral"')
    (folder / "config.json").write_text(config, encoding="utf-8")
    with pytest.raises(
        ExportError, match=r"model_type: expected one of 'gpt2', 'llama', 'qwen2', 'qwen3', got 'mistral'"
    ):
        load_source(str(folder), KEY)


def bpe_tokenizer(folder: Path) -> Tokenizer:
    """A small byte-level BPE trained on TEXT: a tokenizer of its own, as Llama models have."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer


def test_a_source_samples_as_it_is_with_its_own_hugging_face_tokenizer(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "llama"
    folder.mkdir()
    tokenizer = bpe_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=64,
        initializer_range=0.5,  # clear-cut greedy choices (the default's near-uniform logits tie)
    )
    theirs: Any = LlamaForCausalLM(config)
    theirs.eval().save_pretrained(folder)
    cfg = SampleConfig(
        runtime=SampleRuntimeConfig(out_dir=tmp_path / "samples", init_from=str(folder)),
        sample=SampleSettings(start="First Citizen:", max_new_tokens=12, temperature=0.0),
    )
    (text,) = sample_source(cfg)
    prompt = torch.tensor([tokenizer.encode("First Citizen:").ids])
    theirs.generation_config.eos_token_id = None  # ours has no end token: 12 tokens, whatever they are
    with torch.no_grad():
        greedy = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
    assert greedy.shape == (1, prompt.shape[1] + 12)
    assert text == tokenizer.decode(greedy[0].tolist())  # transformers' own greedy continuation
    (record,) = (tmp_path / "samples" / "samples").glob("*.json")
    assert json.loads(record.read_text(encoding="utf-8"))["checkpoint"] == str(folder)

    # Training needs a dataset prepared with the source's tokenizer: a char dataset is refused, one
    # prepared with tokenizer = "huggingface" from the source trains.
    write_char_dataset(tmp_path / "data")
    table = tiny_train_table(tmp_path / "data", tmp_path / "out")
    table["model"] = {"init_from": str(folder)}
    with pytest.raises(DataError, match=r"uses the Hugging Face tokenizer of .*, but the dataset .* is a char"):
        train(train_config(table), Pretrained())
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    choice = TokenizerChoice(kind="huggingface", tokenizer_from=str(folder))
    meta = prepare_corpus(tmp_path / "corpus.txt", tmp_path / "own", tokenizer=choice, val_fraction=0.1)
    assert meta.train_tokens is not None
    assert meta.train_tokens > 0
    table = tiny_train_table(tmp_path / "own", tmp_path / "out")
    table["model"] = {"init_from": str(folder)}
    table["runtime"]["max_iters"] = 2
    result = train(train_config(table), Pretrained())
    assert result.last_eval is not None
    assert math.isfinite(result.last_eval["val_bpb"])


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_finetune_a_source_like_one_rank_with_doubled_accumulation(tmp_path: Path, parallel: str) -> None:
    """Under torchrun (2 CPU ranks, gloo) every rank starts from the source's weights: the loss curve
    equals one rank's with twice the accumulation on the same windows (sequential sampler)."""
    meta = write_char_dataset(tmp_path / "data", text_with_whole_steps(BLOCK, WINDOWS_PER_STEP))
    folder, _ = saved(tmp_path, "llama", meta)

    def table(out: Path, grad_accum_steps: int) -> dict[str, Any]:
        table = tiny_train_table(tmp_path / "data", out)
        table["model"] = {"init_from": str(folder)}
        table["data"] |= {"grad_accum_steps": grad_accum_steps, "sampler": "sequential", "block_size": BLOCK}
        table["runtime"] |= {"max_iters": 8, "eval_interval": 8, "dist_timeout_s": 30.0, "parallel": parallel}
        return table

    train(train_config(table(tmp_path / "one", 2)), Pretrained())
    result = run_torchrun(write_toml(tmp_path / "two.toml", {"train": table(tmp_path / "two", 1)}), nproc=2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"2 rank(s) ({parallel})" in result.stderr
    one, two = (
        read_scalars(tmp_path / "one" / "logs" / "tb")["train/loss"],
        read_scalars(tmp_path / "two" / "logs" / "tb")["train/loss"],
    )
    assert [step for step, _ in two] == [step for step, _ in one] == list(range(8))
    worst = max(abs(a - b) / abs(a) for (_, a), (_, b) in zip(one, two, strict=True))
    assert worst < 1e-5, f"largest relative loss difference {worst:.3g}"


def test_a_resumed_finetune_continues_bit_for_bit(tmp_path: Path) -> None:
    """4 steps, then a resume to 8 (dropout on, so RNG states matter) = 8 steps at once."""
    meta = write_char_dataset(tmp_path / "data")
    folder, _ = saved(tmp_path, "gpt2", meta)

    def finetune(out: Path, max_iters: int) -> None:
        table = tiny_train_table(tmp_path / "data", out)
        table["model"] = {"init_from": str(folder), "dropout": 0.1}
        table["runtime"] |= {"max_iters": max_iters, "eval_interval": 4}
        train(train_config(table), Pretrained())

    finetune(tmp_path / "straight", 8)
    finetune(tmp_path / "resumed", 4)
    finetune(tmp_path / "resumed", 8)
    straight, resumed = (
        load_checkpoint(tmp_path / "straight" / LAST_NAME),
        load_checkpoint(tmp_path / "resumed" / LAST_NAME),
    )
    assert resumed.iter_num == straight.iter_num == 8
    assert all(torch.equal(resumed.model[name], tensor) for name, tensor in straight.model.items())
