"""The one sampler on a LoRA run's merged model (`[sample.runtime] out_dir = <run>/merged`).

Checked against base + adapter in PEFT (transformers' greedy `generate`, and a full-recompute
greedy decode with the sampler's documented context window): the merged model is the adapted
one, not the base; prompts from files, device and dtype from [sample.runtime], the seed,
context_keep, streaming one sample to stdout and saving under <sample out_dir>/samples/ all hold
for it; the adapter-only run folder is refused with one line naming merged/.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ml_playground.config import ExperimentConfig, SampleConfig
from ml_playground.config_loader import parse_experiment_config
from ml_playground.errors import CheckpointError, ConfigError, DeviceError
from ml_playground.finetune.lora import LoRA, adapter_state, load_adapter_state
from ml_playground.interop.export import run_export
from ml_playground.model import GPT
from ml_playground.sample import SEPARATOR, run_sampling
from ml_playground.tokenizers import CharTokenizer
from ml_playground.train.checkpoint import load_checkpoint
from tests.integration.tiny_gpt import CORPUS, char_model
from tests.support.tiny_lora import (
    adapted_hf,
    finetune,
    fresh_lora,
    lora_train_table,
    torch_threads,
    write_base,
    write_finetune_dataset,
)
from tests.support.tiny_training import train_config

pytestmark = pytest.mark.slow

PROMPT = "First Citizen:\n"
BLOCK_SIZE = 96  # the base's context (tiny_gpt.char_model), and so the merged model's


@dataclass(frozen=True, slots=True, kw_only=True)
class LoRARun:
    root: Path
    out_dir: Path
    base_dir: Path
    tokenizer: CharTokenizer


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the base is a local directory; never reach the hub


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> LoRARun:
    root = tmp_path_factory.mktemp("lora_sample")
    # One thread: the tests share the CPU, and spinning thread pools slow tiny models down.
    with torch_threads(1):
        model, tokenizer, meta = char_model(steps=20)
        write_base(model, meta, root / "base")
        text = "\n".join(reversed(CORPUS.splitlines())) * 4  # the base's characters, another text
        write_finetune_dataset(root / "ds", tokenizer, meta, text)
        table = lora_train_table(root / "ds", root / "base", root / "run", max_iters=40)
        table["data"] = {**table["data"], "block_size": 32, "batch_size": 8}
        finetune(train_config(table))
    return LoRARun(root=root, out_dir=root / "run", base_dir=root / "base", tokenizer=tokenizer)


def sample_config(out_dir: Path, **settings: Any) -> SampleConfig:
    runtime = {"out_dir": str(out_dir)} | {k: settings.pop(k) for k in ("device", "dtype", "seed") if k in settings}
    raw = {"sample": {"runtime": runtime, "sample": {"start": PROMPT, "max_new_tokens": 40, **settings}}}
    sample = parse_experiment_config(raw, Path("sample.toml")).sample
    assert sample is not None
    return sample


def sample(run: LoRARun, **settings: Any) -> str:
    with torch_threads(1):
        (text,) = run_sampling(sample_config(run.out_dir / "merged", **settings))
    return text


def adapted(run: LoRARun) -> Any:
    """Base + best adapter in PEFT: what the merged model must be."""
    return adapted_hf(run.base_dir, run.out_dir / "adapter")


def reference_greedy(model: Any, ids: list[int], new_tokens: int, *, keep: int = BLOCK_SIZE) -> list[int]:
    """Full-recompute greedy decode with the sampler's window: the context grows from the start
    until it outgrows the block, then restarts from the last `keep` tokens."""
    out, start = list(ids), 0
    with torch.no_grad():
        for _ in range(new_tokens):
            if len(out) - start > BLOCK_SIZE:
                start = len(out) - keep
            logits = model(input_ids=torch.tensor([out[start:]])).logits
            out.append(int(logits[0, -1].argmax()))
    return out


class LinearOutputs(TorchFunctionMode):
    """Records the dtype and device of every F.linear output (every matmul of our GPT)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[torch.dtype, str]] = set()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is torch.nn.functional.linear and isinstance(out, Tensor):
            self.seen.add((out.dtype, out.device.type))
        return out


@pytest.fixture
def linear_outputs() -> Generator[LinearOutputs]:
    with LinearOutputs() as mode:
        yield mode


def test_greedy_sample_is_peft_generate(lora_run: LoRARun) -> None:
    text = sample(lora_run, temperature=0, max_new_tokens=60)
    ids = lora_run.tokenizer.encode(PROMPT)
    with torch.no_grad(), torch_threads(1):
        generated = adapted(lora_run).generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=60,
        )
    assert lora_run.tokenizer.encode(text) == [int(t) for t in generated[0]]


def test_merged_checkpoint_is_base_plus_best_adapter(lora_run: LoRARun) -> None:
    merged = load_checkpoint(lora_run.out_dir / "merged" / "ckpt_best.pt")
    model = GPT(merged.arch).eval()
    model.load_state_dict(merged.model)
    from transformers import GPT2LMHeadModel

    base: Any = GPT2LMHeadModel.from_pretrained(lora_run.base_dir)
    base.eval()
    ids = torch.tensor([lora_run.tokenizer.encode(CORPUS[:80])])
    with torch.no_grad():
        ours = model(ids).logits
        assert (ours - adapted(lora_run)(input_ids=ids).logits).abs().max().item() <= 1e-4
        assert (ours - base(input_ids=ids).logits).abs().max().item() > 1e-2  # not the base's weights
    best = load_checkpoint(lora_run.out_dir / "ckpt_best.pt")
    assert best.iter_num > 0
    assert (merged.iter_num, merged.best_val_loss, merged.config) == (best.iter_num, best.best_val_loss, best.config)


def fresh_target(run: LoRARun, out_dir: Path) -> tuple[LoRA, GPT]:
    """The mode and model a LoRA run on `out_dir` builds (a fresh adapter), outside any run."""
    return fresh_lora(train_config(lora_train_table(run.root / "ds", run.base_dir, out_dir, max_iters=40)))


def test_merge_reads_the_best_adapter_and_leaves_the_model_alone(lora_run: LoRARun, tmp_path: Path) -> None:
    """`finish` with a model holding other weights (a fresh adapter) merges ckpt_best.pt's."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(lora_run.out_dir / "ckpt_best.pt", out / "ckpt_best.pt")
    mode, model = fresh_target(lora_run, out)
    fresh = {key: value.clone() for key, value in adapter_state(model).items()}
    mode.finish(model, out)
    assert all(torch.equal(value, fresh[key]) for key, value in adapter_state(model).items())
    merged = load_checkpoint(out / "merged" / "ckpt_best.pt")
    expected = load_checkpoint(lora_run.out_dir / "merged" / "ckpt_best.pt")
    assert merged.model.keys() == expected.model.keys()
    assert all(torch.equal(value, expected.model[key]) for key, value in merged.model.items())


def test_the_sampler_draws_from_the_live_adapter_as_from_the_merged_model(lora_run: LoRARun, tmp_path: Path) -> None:
    """Our GPT with its LoRA layers (no merge) in the one sampler: the merged model's text."""
    _, live = fresh_target(lora_run, tmp_path)
    load_adapter_state(live, load_checkpoint(lora_run.out_dir / "ckpt_best.pt").model)
    live.eval()
    settings = {"temperature": 0, "max_new_tokens": 60}
    with torch_threads(1):
        (text,) = run_sampling(
            sample_config(tmp_path / "live", **settings), load=lambda _: (live, lora_run.tokenizer, "live adapter")
        )
    assert text == sample(lora_run, **settings)
    assert any(name.endswith("lora_B.default.weight") for name, _ in live.named_parameters())  # not merged


def test_no_best_checkpoint_merges_nothing_and_says_so(
    lora_run: LoRARun, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mode, model = fresh_target(lora_run, tmp_path)
    with caplog.at_level(logging.WARNING, logger="ml_playground.finetune.lora"):
        mode.finish(model, tmp_path)
    assert f"no ckpt_best.pt in {tmp_path} (no evaluation saved one): nothing to merge" in caplog.text
    assert not (tmp_path / "merged").exists()


def test_file_prompt(lora_run: LoRARun) -> None:
    prompt = "All:\nSpeak, speak.\n\nFirst Citizen:\n"
    (lora_run.root / "prompt.txt").write_text(prompt, encoding="utf-8")
    text = sample(lora_run, start=f"FILE:{lora_run.root / 'prompt.txt'}", temperature=0, max_new_tokens=30)
    ids = lora_run.tokenizer.encode(prompt)
    with torch_threads(1):
        assert lora_run.tokenizer.encode(text) == reference_greedy(adapted(lora_run), ids, 30)


def test_dtype_comes_from_sample_runtime(lora_run: LoRARun, linear_outputs: LinearOutputs) -> None:
    sample(lora_run, dtype="bfloat16", max_new_tokens=5)
    assert linear_outputs.seen == {(torch.bfloat16, "cpu")}
    linear_outputs.seen.clear()
    sample(lora_run, dtype="float32", max_new_tokens=5)
    assert linear_outputs.seen == {(torch.float32, "cpu")}


def test_device_comes_from_sample_runtime(lora_run: LoRARun, linear_outputs: LinearOutputs) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="device 'cuda' is configured but CUDA is not available"):
            sample(lora_run, device="cuda")
        return
    text = sample(lora_run, device="cuda")
    assert linear_outputs.seen == {(torch.float32, "cuda")}  # every matmul ran on the GPU
    assert text.startswith(PROMPT)
    assert len(text) == len(PROMPT) + 40


def test_seed_decides_the_text(lora_run: LoRARun) -> None:
    first = sample(lora_run, seed=3, temperature=1.0, top_k=None, max_new_tokens=60)
    assert sample(lora_run, seed=3, temperature=1.0, top_k=None, max_new_tokens=60) == first
    assert sample(lora_run, seed=4, temperature=1.0, top_k=None, max_new_tokens=60) != first


def test_context_keep_past_block_size(lora_run: LoRARun) -> None:
    new_tokens = BLOCK_SIZE + 40  # the window is cropped twice
    text = sample(lora_run, temperature=0, max_new_tokens=new_tokens, context_keep=48)
    ids = lora_run.tokenizer.encode(PROMPT)
    with torch_threads(1):
        assert lora_run.tokenizer.encode(text) == reference_greedy(adapted(lora_run), ids, new_tokens, keep=48)
    too_long = rf"sample\.sample\.context_keep: {BLOCK_SIZE + 1} exceeds the checkpoint's block_size {BLOCK_SIZE}"
    with pytest.raises(ConfigError, match=too_long):
        sample(lora_run, context_keep=BLOCK_SIZE + 1)


class Recorder:
    """sys.stdout that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        if text:
            self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        return None


def test_one_sample_streams_and_is_saved_under_sample_out_dir(
    lora_run: LoRARun, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdout = Recorder()
    monkeypatch.setattr("sys.stdout", stdout)
    text = sample(lora_run, temperature=0.8, max_new_tokens=25)
    # The prompt, then each token as it comes (one character each), then the separator.
    assert stdout.writes == [PROMPT, *text[len(PROMPT) :], SEPARATOR]
    folder = lora_run.out_dir / "merged" / "samples"
    records = [json.loads(path.read_text(encoding="utf-8")) for path in folder.glob("*.json")]
    record = next(r for r in records if r["samples"] == [text])
    assert record["checkpoint"] == str(lora_run.out_dir / "merged" / "ckpt_best.pt")
    saved = [path.read_text(encoding="utf-8") for path in folder.glob("*.txt")]
    assert text in saved
    assert not (lora_run.out_dir / "samples").exists()


def test_adapter_only_run_folder_is_refused_naming_merged(lora_run: LoRARun) -> None:
    out = lora_run.out_dir
    expected = (
        f"{out / 'ckpt_best.pt'}: holds a LoRA adapter, not a whole model; sample or export its merged model in "
        f"{out / 'merged'} (written when train.peft.merge_on_save is true)"
    )
    with pytest.raises(CheckpointError) as sampling:
        run_sampling(sample_config(out))
    assert str(sampling.value) == expected
    raw = {
        "sample": {"runtime": {"out_dir": str(out)}},
        "export": {"ollama": {"enabled": True, "export_dir": str(lora_run.root / "export"), "model_name": "lora"}},
    }
    cfg: ExperimentConfig = parse_experiment_config(raw, lora_run.root / "export.toml")
    assert cfg.export is not None
    with pytest.raises(CheckpointError) as export:
        run_export(cfg.export, cfg, lora_run.root / "export.toml")
    assert str(export.value) == expected
    assert not (lora_run.root / "export").exists()
