"""Sampling: checkpoint discovery -> model + tokenizer -> generation -> stdout and out_dir/samples/.

The checkpoint is found in `out_dir` (ckpt_best.pt, ckpt_last.pt, then nanoGPT's ckpt.pt) and
carries its own tokenizer (`dataset_meta`), so no dataset folder is needed. Another model (a
pretrained `init_from` source, `interop/source.py`) comes in as a `ModelLoader`; everything after
loading is the same. Tokens stream to
stdout as they are generated; each finished sample is also saved atomically under
`out_dir/samples/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Never

import torch
from torch import Tensor
from tqdm import tqdm

from ml_playground.atomic import write_text_atomic
from ml_playground.config import SampleConfig, SampleSettings, project_path
from ml_playground.config_loader import read_named_text
from ml_playground.errors import CheckpointError, ConfigError, MLPlaygroundError, os_reason, summary
from ml_playground.generate import SamplingParams, generate
from ml_playground.model import GPT
from ml_playground.progress import progress_bar
from ml_playground.runtime import Runtime, resolve_runtime, seed_everything
from ml_playground.tokenizers import Tokenizer, tokenizer_from_meta
from ml_playground.train.checkpoint import Checkpoint, find_checkpoint, load_model_checkpoint

log = logging.getLogger(__name__)

FILE_PREFIX = "FILE:"
SEPARATOR = "\n---------------\n"
RESUME = "resume"

# The model to sample on the runtime's device (eval mode), its tokenizer, and where it came from.
ModelLoader = Callable[[Runtime], tuple[GPT, Tokenizer, str]]


def load_model_for_inference(out_dir: Path, runtime: Runtime) -> tuple[GPT, Tokenizer, Path]:
    """The discovered checkpoint as an eval-mode model on the runtime's device, its tokenizer, its path."""
    path = find_checkpoint(out_dir)
    model, tokenizer, _checkpoint = model_from_checkpoint(path, runtime, purpose="sampling from")
    return model, tokenizer, path


def model_from_checkpoint(path: Path, runtime: Runtime, *, purpose: str) -> tuple[GPT, Tokenizer, Checkpoint]:
    """The checkpoint at `path` as an eval-mode model on the runtime's device, its tokenizer and the
    checkpoint itself (step, run config); `purpose` names the use in the log line."""
    checkpoint, meta = load_model_checkpoint(path)
    kind = "legacy nanoGPT checkpoint" if checkpoint.is_legacy else f"checkpoint schema v{checkpoint.schema_version}"
    log.info("%s %s (%s, iter %d)", purpose, path, kind, checkpoint.iter_num)
    model = GPT(checkpoint.arch.replace(dropout=0.0))
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match model_args ({summary(exc)})") from None
    model.to(runtime.device).eval()
    tokenizer = tokenizer_from_meta(meta, where=f"{path}: dataset_meta")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    return model, tokenizer, checkpoint


def read_prompt(start: str) -> str:
    """`start` itself, or the contents of `FILE:path` (relative paths resolve against the project root)."""
    if not start.startswith(FILE_PREFIX):
        return start
    return read_named_text(project_path(start.removeprefix(FILE_PREFIX)), "sample.sample.start: prompt file")


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    if not ids:
        raise ConfigError("sample.sample.start: the prompt is empty; give at least one character")
    return ids


class StreamDecoder:
    """Token ids -> text pieces as they arrive.

    A BPE token can end in the middle of a multi-byte character; such ids are held back until
    the character is complete (or `max_pending` ids are waiting, so invalid bytes still show).
    """

    def __init__(self, tokenizer: Tokenizer, max_pending: int = 8) -> None:
        self._tokenizer = tokenizer
        self._max_pending = max_pending
        self._pending: list[int] = []

    def push(self, token: int) -> str:
        self._pending.append(token)
        text = self._tokenizer.decode(self._pending)
        if text.endswith("\ufffd") and len(self._pending) < self._max_pending:
            return ""
        self._pending.clear()
        return text

    def flush(self) -> str:
        text = self._tokenizer.decode(self._pending) if self._pending else ""
        self._pending.clear()
        return text


def _printer(decoder: StreamDecoder) -> Callable[[Tensor], None]:
    def on_token(token: Tensor) -> None:  # token: (1,)
        piece = decoder.push(int(token[0]))
        if piece:
            print(piece, end="", flush=True)

    return on_token


def _counter(bar: tqdm[Never]) -> Callable[[Tensor], None]:
    def on_token(_token: Tensor) -> None:
        bar.update(1)

    return on_token


def sampling_params(settings: SampleSettings) -> SamplingParams:
    return SamplingParams(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)


def context_keep(settings: SampleSettings, model: GPT) -> int | None:
    keep = settings.context_keep
    if keep is not None and keep > model.config.block_size:
        raise ConfigError(
            f"sample.sample.context_keep: {keep} exceeds the checkpoint's block_size {model.config.block_size}"
        )
    return keep


def save_samples(out_dir: Path, checkpoint: str, cfg: SampleConfig, samples: list[str]) -> Path:
    """Write each sample to samples/<stamp>_<i>.txt and the run's settings to samples/<stamp>.json."""
    folder = out_dir / "samples"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name, suffix = stamp, 0
    while (folder / f"{name}.json").exists():  # several runs within one second
        suffix += 1
        name = f"{stamp}-{suffix}"
    record = {
        "checkpoint": checkpoint,
        "seed": cfg.runtime.seed,
        "settings": dataclasses.asdict(cfg.sample),
        "samples": samples,
    }
    files = {folder / f"{name}_{i:02d}.txt": text for i, text in enumerate(samples)}
    files[folder / f"{name}.json"] = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    try:
        for path, text in files.items():
            write_text_atomic(path, text)
    except OSError as exc:
        for path in files:  # all of this run's files or none
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise MLPlaygroundError(f"{folder}: cannot write samples ({os_reason(exc)})") from None
    return folder / f"{name}.json"


def checkpoint_loader(cfg: SampleConfig) -> ModelLoader:
    """The checkpoint discovered in out_dir ([sample.runtime] init_from = "resume")."""
    if cfg.runtime.init_from != RESUME:
        raise ConfigError(
            f"sample.runtime.init_from = {cfg.runtime.init_from!r}: a pretrained source is sampled through "
            "interop.source.sample_source (as `ml_playground sample` does), not from out_dir"
        )

    def load(runtime: Runtime) -> tuple[GPT, Tokenizer, str]:
        model, tokenizer, path = load_model_for_inference(cfg.runtime.out_dir, runtime)
        return model, tokenizer, str(path)

    return load


def run_sampling(cfg: SampleConfig, load: ModelLoader | None = None) -> list[str]:
    """Generate `num_samples` texts (prompt included), print them and save them; returns them.

    The model is `load`'s, by default the checkpoint discovered in out_dir.

    All samples are drawn together as one batch (one forward per token for all of them, as
    fast as one sample on a CPU for small models). A single sample streams to stdout token by
    token; several show a progress bar and print each text when the batch is done.
    """
    runtime = resolve_runtime(cfg.runtime.device, cfg.runtime.dtype)
    model, tokenizer, origin = (load or checkpoint_loader(cfg))(runtime)
    settings = cfg.sample
    keep = context_keep(settings, model)
    prompt_text = read_prompt(settings.start)
    prompt_ids = encode_prompt(tokenizer, prompt_text)
    prompt = torch.tensor([prompt_ids] * settings.num_samples, dtype=torch.long, device=runtime.device)
    if cfg.runtime.compile:
        model.compile()
    seed_everything(cfg.runtime.seed)
    generator = torch.Generator().manual_seed(cfg.runtime.seed)
    params = sampling_params(settings)

    def draw(on_token: Callable[[Tensor], None]) -> Tensor:
        return generate(
            model,
            prompt,
            settings.max_new_tokens,
            params,
            generator=generator,
            keep=keep,
            vocab_size=tokenizer.vocab_size,
            cache_dtype=runtime.torch_dtype,
            autocast=runtime.autocast,
            on_token=on_token,
        )

    def texts(tokens: Tensor) -> list[str]:
        return [prompt_text + tokenizer.decode([int(t) for t in row[len(prompt_ids) :]]) for row in tokens]

    if settings.num_samples == 1:
        decoder = StreamDecoder(tokenizer)
        print(prompt_text, end="", flush=True)
        samples = texts(draw(_printer(decoder)))
        print(decoder.flush(), end=SEPARATOR, flush=True)
    else:
        with progress_bar(settings.max_new_tokens, "sampling", unit="tok") as bar:
            samples = texts(draw(_counter(bar)))
        for text in samples:
            print(text, end=SEPARATOR, flush=True)
    saved = save_samples(cfg.runtime.out_dir, origin, cfg, samples)
    log.info("saved %d sample(s) to %s", len(samples), saved.parent)
    return samples
