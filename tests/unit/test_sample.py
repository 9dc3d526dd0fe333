"""Sampling from checkpoints: discovery, tokenizer from the checkpoint, prompts, streaming, saving."""

from __future__ import annotations

import io
import json
import logging
import pickle
import sys
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook

from ml_playground.config import PROJECT_ROOT, DType, GPTConfig, SampleConfig, SampleRuntimeConfig, SampleSettings
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.generate import SamplingParams, generate
from ml_playground.model import GPT
from ml_playground.runtime import Runtime
from ml_playground.sample import StreamDecoder, load_model_for_inference, read_prompt, run_sampling, save_samples
from ml_playground.tokenizers import CharTokenizer, TiktokenTokenizer
from ml_playground.train.checkpoint import Checkpoint, save_checkpoint
from tests.support.greedy import float32_shortfalls

CORPUS = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n"
ITOS = sorted(set(CORPUS))


def tiny_gpt(vocab_size: int, seed: int = 0, bias: bool = False) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=16, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16, bias=bias))
    with torch.no_grad():  # larger embeddings than GPT-2's init: varied, clear-cut greedy choices
        if model.wpe is not None:  # absent with rotary positions
            model.wpe.weight.mul_(10.0)
        model.wte.weight.mul_(3.0)
    return model.eval()


def char_meta() -> DatasetMeta:
    return DatasetMeta(kind="char", vocab_size=len(ITOS), dtype="uint16", itos=ITOS)


def save_ours(path: Path, model: GPT, meta: DatasetMeta | None = None) -> None:
    meta = char_meta() if meta is None else meta
    checkpoint = Checkpoint(
        schema_version=1,
        model=model.state_dict(),
        arch=model.config,
        iter_num=7,
        best_val_loss=1.5,
        config={},
        dataset_meta=meta.to_dict(),
    )
    save_checkpoint(path, checkpoint)


def sample_config(
    out_dir: Path,
    *,
    start: str = "To be",
    num_samples: int = 1,
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    top_k: int | None = 200,
    context_keep: int | None = None,
    seed: int = 1337,
    dtype: DType = "float32",
) -> SampleConfig:
    return SampleConfig(
        runtime=SampleRuntimeConfig(out_dir=out_dir, seed=seed, dtype=dtype),
        sample=SampleSettings(
            start=start,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            context_keep=context_keep,
        ),
    )


def reference_greedy(model: GPT, ids: list[int], new_tokens: int) -> list[int]:
    """nanoGPT's sampling loop at temperature 0: the whole (cropped) context every step, no cache."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(new_tokens):
            logits: Tensor = model(idx[:, -model.config.block_size :]).logits
            idx = torch.cat([idx, logits[:, -1, :].argmax(dim=-1, keepdim=True)], dim=1)
    return [int(t) for t in idx[0]]


class TestPrompt:
    def test_plain_text_is_the_prompt(self) -> None:
        assert read_prompt("Hello") == "Hello"

    def test_file_prompt_is_read(self, tmp_path: Path) -> None:
        prompt = tmp_path / "prompt.txt"
        prompt.write_text("Wherefore ärt thou\n", encoding="utf-8")
        assert read_prompt(f"FILE:{prompt}") == "Wherefore ärt thou\n"

    def test_relative_file_prompt_resolves_against_the_project_root(self) -> None:
        assert read_prompt("FILE:pyproject.toml") == (PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8")

    def test_missing_file_prompt_names_key_and_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"sample\.sample\.start: prompt file .*nope\.txt not found"):
            read_prompt(f"FILE:{tmp_path / 'nope.txt'}")


class TestStreamDecoder:
    def test_multibyte_characters_are_never_split(self) -> None:
        tokenizer = TiktokenTokenizer("gpt2")
        text = "naïve café — 日本語の文 🙂🎉 done"
        ids = tokenizer.encode(text)
        # GPT-2 BPE splits some of these characters across tokens.
        assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
        decoder = StreamDecoder(tokenizer)
        pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
        assert "".join(pieces) == text
        assert not any("\ufffd" in piece for piece in pieces)

    def test_char_tokens_stream_one_by_one(self) -> None:
        tokenizer = CharTokenizer(ITOS)
        decoder = StreamDecoder(tokenizer)
        assert [decoder.push(i) for i in tokenizer.encode("to be")] == list("to be")
        assert decoder.flush() == ""


class TestRunSampling:
    @pytest.mark.parametrize("count", [1, 2])  # one streams token by token, two print when done
    def test_prints_returns_and_saves_the_same_samples(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], count: int
    ) -> None:
        save_ours(tmp_path / "ckpt_best.pt", tiny_gpt(len(ITOS)))
        samples = run_sampling(sample_config(tmp_path, num_samples=count, max_new_tokens=30))
        assert len(samples) == count
        assert all(s.startswith("To be") and len(s) == len("To be") + 30 for s in samples)
        assert capsys.readouterr().out == "".join(s + "\n---------------\n" for s in samples)
        (record_path,) = (tmp_path / "samples").glob("*.json")
        record = json.loads(record_path.read_text(encoding="utf-8"))
        assert record["samples"] == samples
        assert record["checkpoint"] == str(tmp_path / "ckpt_best.pt")
        texts = sorted((tmp_path / "samples").glob("*.txt"))
        assert [p.read_text(encoding="utf-8") for p in texts] == samples

    def test_one_sample_streams_each_token_as_it_is_drawn(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """stdout gets the prompt, then every new character right after the forward pass that drew
        it (before the next one runs), then the separator; not the whole text at the end."""
        save_ours(tmp_path / "ckpt_best.pt", tiny_gpt(len(ITOS)))
        events: list[tuple[str, str]] = []

        class RecordingStdout(io.StringIO):
            def write(self, text: str) -> int:
                if text:
                    events.append(("print", text))
                return super().write(text)

        def on_forward(module: nn.Module, _args: Any, _output: Any) -> None:
            if isinstance(module, GPT):
                events.append(("forward", ""))

        monkeypatch.setattr(sys, "stdout", RecordingStdout())
        handle = register_module_forward_hook(on_forward)
        try:
            (text,) = run_sampling(sample_config(tmp_path, max_new_tokens=10))
        finally:
            handle.remove()
        drawn = text.removeprefix("To be")
        assert len(drawn) == 10
        steps = [event for char in drawn for event in (("forward", ""), ("print", char))]
        assert events == [("print", "To be"), *steps, ("print", "\n---------------\n")]

    def test_all_samples_are_drawn_as_one_batch(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        save_ours(tmp_path / "ckpt_best.pt", tiny_gpt(len(ITOS)))
        batches: list[tuple[int, ...]] = []

        def recording_generate(model: GPT, prompt: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            batches.append(tuple(prompt.shape))
            return generate(model, prompt, *args, **kwargs)

        monkeypatch.setattr("ml_playground.sample.generate", recording_generate)
        samples = run_sampling(sample_config(tmp_path, num_samples=3, max_new_tokens=20))
        assert batches == [(3, len("To be"))]
        assert len(set(samples)) == 3  # each row draws its own tokens

    def test_same_seed_same_text(self, tmp_path: Path) -> None:
        save_ours(tmp_path / "ckpt_best.pt", tiny_gpt(len(ITOS)))
        first = run_sampling(sample_config(tmp_path, seed=3, num_samples=2))
        again = run_sampling(sample_config(tmp_path, seed=3, num_samples=2))
        other = run_sampling(sample_config(tmp_path, seed=4, num_samples=2))
        assert first == again
        assert first != other
        assert first[0] != first[1]  # samples continue the same random stream
        assert len(list((tmp_path / "samples").glob("*.json"))) == 3  # no run overwrites another

    def test_greedy_matches_nanogpt_loop_past_block_size(self, tmp_path: Path) -> None:
        model = tiny_gpt(len(ITOS))
        save_ours(tmp_path / "ckpt_last.pt", model)
        (text,) = run_sampling(sample_config(tmp_path, temperature=0.0, max_new_tokens=50))
        tokenizer = CharTokenizer(ITOS)
        assert tokenizer.encode(text) == reference_greedy(model, tokenizer.encode("To be"), 50)

    def test_file_prompt(self, tmp_path: Path) -> None:
        save_ours(tmp_path / "ckpt_best.pt", tiny_gpt(len(ITOS)))
        (tmp_path / "prompt.txt").write_text("Whether 'tis", encoding="utf-8")
        (text,) = run_sampling(sample_config(tmp_path, start=f"FILE:{tmp_path / 'prompt.txt'}", temperature=0.0))
        assert text.startswith("Whether 'tis")

    def test_best_is_preferred_and_named(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        save_ours(tmp_path / "ckpt_last.pt", tiny_gpt(len(ITOS), seed=1))
        best = tiny_gpt(len(ITOS), seed=2)
        save_ours(tmp_path / "ckpt_best.pt", best)
        with caplog.at_level(logging.INFO, logger="ml_playground.sample"):
            (text,) = run_sampling(sample_config(tmp_path, temperature=0.0, max_new_tokens=20))
        assert "ckpt_best.pt" in caplog.text
        tokenizer = CharTokenizer(ITOS)
        assert tokenizer.encode(text) == reference_greedy(best, tokenizer.encode("To be"), 20)

    def test_padded_model_vocabulary_never_yields_unknown_ids(self, tmp_path: Path) -> None:
        # nanoGPT pads vocab_size (50257 -> 50304); the padding ids are not tokens.
        save_ours(tmp_path / "ckpt_best.pt", tiny_gpt(len(ITOS) + 40))
        (text,) = run_sampling(sample_config(tmp_path, temperature=2.0, top_k=None, max_new_tokens=60))
        assert len(text) == len("To be") + 60

    def test_bfloat16_autocast_picks_what_float32_picks(self, tmp_path: Path) -> None:
        """Greedy bf16 sampling: every token is float32's argmax up to bf16 rounding (within 0.05
        of the float32 maximum; these logits spread ~0.5 from max to median)."""
        model = tiny_gpt(len(ITOS))
        save_ours(tmp_path / "ckpt_best.pt", model)
        (text,) = run_sampling(sample_config(tmp_path, dtype="bfloat16", temperature=0.0))
        assert len(text) == len("To be") + 40
        tokens = CharTokenizer(ITOS).encode(text)
        assert max(float32_shortfalls(model, tokens, prompt_length=len("To be"))) < 0.05

    def test_gpt2_bpe_checkpoint(self, tmp_path: Path) -> None:
        meta = DatasetMeta(kind="tiktoken", vocab_size=50257, dtype="uint16", encoding="gpt2")
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=16)).eval()
        save_ours(tmp_path / "ckpt_best.pt", model, meta)
        (text,) = run_sampling(sample_config(tmp_path, start="Hello", max_new_tokens=10))
        tokenizer = TiktokenTokenizer("gpt2")
        assert text.startswith("Hello")
        assert len(tokenizer.encode(text)) >= 2


class TestLegacyNanoGPT:
    def write_nanogpt_checkpoint(self, out_dir: Path, model: GPT) -> None:
        """nanoGPT's train.py format: compiled-model key prefixes, tensor best_val_loss, meta.pkl beside."""
        state = {f"_orig_mod.{key}": value for key, value in model.state_dict().items()}
        c = model.config
        torch.save(
            {
                "model": state,
                "optimizer": {"state": {}, "param_groups": []},
                "model_args": {
                    "n_layer": c.n_layer,
                    "n_head": c.n_head,
                    "n_embd": c.n_embd,
                    "block_size": c.block_size,
                    "bias": c.bias,
                    "vocab_size": c.vocab_size,
                    "dropout": 0.1,
                },
                "iter_num": 2000,
                "best_val_loss": torch.tensor(1.4697),
                "config": {"dataset": "shakespeare_char", "batch_size": 64, "compile": True},
            },
            out_dir / "ckpt.pt",
        )
        meta = {"vocab_size": len(ITOS), "itos": dict(enumerate(ITOS)), "stoi": {ch: i for i, ch in enumerate(ITOS)}}
        (out_dir / "meta.pkl").write_bytes(pickle.dumps(meta))

    def test_nanogpt_checkpoint_samples_like_nanogpt(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        model = tiny_gpt(len(ITOS), bias=True)
        self.write_nanogpt_checkpoint(tmp_path, model)
        with caplog.at_level(logging.INFO, logger="ml_playground.sample"):
            (text,) = run_sampling(sample_config(tmp_path, temperature=0.0, max_new_tokens=40))
        assert "ckpt.pt" in caplog.text
        assert "legacy" in caplog.text
        tokenizer = CharTokenizer(ITOS)
        assert tokenizer.encode(text) == reference_greedy(model, tokenizer.encode("To be"), 40)

    def test_nanogpt_padded_gpt2_checkpoint_loads_and_never_draws_padding(self, tmp_path: Path) -> None:
        """nanoGPT's GPT-2 default pads 50257 to 50304 rows; without meta.pkl the tokenizer is GPT-2 BPE.
        The padding rows are scaled up so that, unmasked, they would win."""
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=16, bias=True)).eval()
        with torch.no_grad():
            model.wte.weight[50257:] *= 50.0
        self.write_nanogpt_checkpoint(tmp_path, model)
        (tmp_path / "meta.pkl").unlink()  # nanoGPT's GPT-2 runs have none
        loaded, tokenizer, _ = load_model_for_inference(tmp_path, Runtime(torch.device("cpu"), "float32"))
        assert (loaded.config.vocab_size, loaded.config.real_vocab_size, tokenizer.vocab_size) == (50304, 50257, 50257)
        prompt = torch.tensor([tokenizer.encode("Hello, world")])
        assert int(generate(model, prompt, 8, SamplingParams(temperature=0.0)).max()) >= 50257  # unmasked: padding wins
        for params in (SamplingParams(temperature=0.0), SamplingParams(temperature=2.0)):
            drawn = generate(loaded, prompt, 24, params, generator=torch.Generator().manual_seed(0))
            assert int(drawn.max()) < 50257, params
        (text,) = run_sampling(sample_config(tmp_path, start="Hello, world", temperature=0.0, max_new_tokens=8))
        expected = [int(t) for t in generate(loaded, prompt, 8, SamplingParams(temperature=0.0))[0]]
        assert text == tokenizer.decode(expected)


class TestErrors:
    def test_missing_out_dir(self, tmp_path: Path) -> None:
        with pytest.raises(CheckpointError, match="no checkpoint found"):
            run_sampling(sample_config(tmp_path / "absent"))

    def test_empty_out_dir_lists_what_was_looked_for(self, tmp_path: Path) -> None:
        with pytest.raises(CheckpointError, match=r"ckpt_best\.pt, ckpt_last\.pt, ckpt\.pt"):
            run_sampling(sample_config(tmp_path))

    def test_context_keep_beyond_block_size(self, tmp_path: Path) -> None:
        save_ours(tmp_path / "ckpt_best.pt", tiny_gpt(len(ITOS)))
        with pytest.raises(ConfigError, match=r"sample\.sample\.context_keep: 17 exceeds .* block_size 16"):
            run_sampling(sample_config(tmp_path, context_keep=17))

    def test_empty_prompt(self, tmp_path: Path) -> None:
        save_ours(tmp_path / "ckpt_best.pt", tiny_gpt(len(ITOS)))
        with pytest.raises(ConfigError, match=r"sample\.sample\.start: the prompt is empty"):
            run_sampling(sample_config(tmp_path, start=""))

    def test_weights_that_do_not_fit_model_args(self, tmp_path: Path) -> None:
        model = tiny_gpt(len(ITOS))
        checkpoint = Checkpoint(
            schema_version=1,
            model=model.state_dict(),
            arch=model.config.replace(n_embd=32),
            iter_num=0,
            best_val_loss=1.0,
            config={},
            dataset_meta=char_meta().to_dict(),
        )
        save_checkpoint(tmp_path / "ckpt_best.pt", checkpoint)
        with pytest.raises(CheckpointError, match=r"ckpt_best\.pt: weights do not match model_args"):
            run_sampling(sample_config(tmp_path))


class _FrozenClock(datetime):
    @classmethod
    def now(cls, tz: tzinfo | None = None) -> _FrozenClock:
        return cls(2026, 1, 2, 3, 4, 5, tzinfo=tz)


def test_runs_within_one_second_get_their_own_sample_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ml_playground.sample.datetime", _FrozenClock)  # every save in the same second
    cfg = SampleConfig(runtime=SampleRuntimeConfig(out_dir=tmp_path), sample=SampleSettings())
    records = [save_samples(tmp_path, str(tmp_path / "ckpt_best.pt"), cfg, [f"text {i}"]) for i in range(3)]
    assert [r.name for r in records] == ["20260102T030405Z.json", "20260102T030405Z-1.json", "20260102T030405Z-2.json"]
    assert [json.loads(r.read_text())["samples"] for r in records] == [["text 0"], ["text 1"], ["text 2"]]
