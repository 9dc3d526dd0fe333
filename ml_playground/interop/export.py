"""`make export`: checkpoint -> Hugging Face dir -> GGUF -> Ollama files.

The checkpoint is found in the [sample] (else [train]) out_dir like sampling finds it; a LoRA
run's merged model is such a checkpoint (out_dir/merged/), so export never sees how it was trained.

Steps, all written first into a hidden folder inside [export.ollama].export_dir and moved into
place only when every one has succeeded (a full disk or an unwritable folder is one line, and the
previous export stays as it was):
  hf/          GPT2LMHeadModel, LlamaForCausalLM or Qwen3ForCausalLM directory (interop.hf), as
               `interop.arch.counterpart` finds for the model's options; a model without one stops
               with one line naming the options, before anything is written
  model.gguf   in-process `gguf` writer, or llama.cpp's converter on hf/ when `convert_bin` is set;
               quantized with llama.cpp's quantize API unless quant is f32/f16
  Modelfile, README.md, SHA256SUMS  (interop.ollama)
  export.json  fingerprint of the inputs; when it and SHA256SUMS still match, export is a no-op
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import TypeAdapter
from torch import Tensor

from ml_playground.atomic import atomic_output_path, write_text_atomic
from ml_playground.config import ExperimentConfig, ExportConfig, GPTConfig, OllamaExportConfig, SampleSettings
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import ConfigError, ExportError, MissingDependencyError, summary
from ml_playground.interop import ollama
from ml_playground.interop.arch import counterpart
from ml_playground.interop.gguf import FloatType, write_gguf
from ml_playground.interop.hf import eot_text, export_hf
from ml_playground.train.checkpoint import find_checkpoint, load_model_checkpoint

log = logging.getLogger(__name__)

# Bump when the files an export writes change, so old exports are redone.
EXPORT_FORMAT = 1
FINGERPRINT_FILE = "export.json"
HF_SUBDIR = "hf"

FLOAT_TYPES: dict[str, FloatType] = {"f32": "f32", "f16": "f16"}
# Quantized types -> llama-cpp-python's LLAMA_FTYPE constant (quantized from an f32 GGUF).
QUANT_FTYPES: dict[str, str] = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModel:
    """The model to export: weights with nanoGPT names, the architecture and the tokenizer's metadata."""

    state_dict: dict[str, Tensor]
    config: GPTConfig
    meta: DatasetMeta


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportSource:
    """What to export: the files whose bytes decide the result, and how to load the model."""

    files: tuple[Path, ...]
    load: Callable[[], LoadedModel]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportResult:
    export_dir: Path
    gguf_path: Path
    hf_dir: Path
    skipped: bool  # True when inputs were unchanged and nothing was written


def checkpoint_source(out_dir: Path) -> ExportSource:
    """The best checkpoint of a run (ckpt_best.pt, ckpt_last.pt, ckpt.pt)."""
    path = find_checkpoint(out_dir)

    def load() -> LoadedModel:
        checkpoint, meta = load_model_checkpoint(path)  # the file the fingerprint read
        return LoadedModel(state_dict=checkpoint.model, config=checkpoint.arch, meta=meta)

    return ExportSource(files=(path,), load=load)


def resolve_source(cfg: ExperimentConfig, config_path: Path) -> ExportSource:
    if cfg.sample is not None:
        return checkpoint_source(cfg.sample.runtime.out_dir)
    if cfg.train is not None:
        return checkpoint_source(cfg.train.runtime.out_dir)
    raise ConfigError(f"{config_path}: export needs [sample.runtime] or [train.runtime] to find the checkpoint")


def check_quant(export: OllamaExportConfig, config_path: Path) -> None:
    """An unknown type, or a quantized one without llama-cpp-python, fails before anything is written."""
    if export.quant in QUANT_FTYPES:
        quantizer(export.quant)
    elif export.quant not in FLOAT_TYPES:
        known = ", ".join([*FLOAT_TYPES, *QUANT_FTYPES])
        raise ConfigError(f"{config_path}: export.ollama.quant: unknown type {export.quant!r}; known: {known}")


def quantizer(quant: str) -> ModuleType:
    """llama-cpp-python, which quantizes GGUF files; absent, the error says how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError(
            f"export.ollama.quant {quant!r} needs llama-cpp-python (dev dependency group): run `make setup`, "
            'or export "f16" / "f32"'
        ) from None
    return llama_cpp


def fingerprint(source: ExportSource, export: OllamaExportConfig, sample: SampleSettings | None) -> str:
    """sha256 over the input files' digests and every setting that shapes the output."""
    payload: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "inputs": {str(path): ollama.sha256_of(path) for path in source.files},
        "export": TypeAdapter(OllamaExportConfig).dump_python(export, mode="json"),
        "sample": None if sample is None else TypeAdapter(SampleSettings).dump_python(sample, mode="json"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def up_to_date(export_dir: Path, digest: str) -> bool:
    marker = export_dir / FINGERPRINT_FILE
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8")).get("inputs_sha256")
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return recorded == digest and ollama.sha256sums_match(export_dir)


def run_converter(convert_bin: Path, hf_dir: Path, out: Path, ftype: FloatType) -> None:
    """llama.cpp's convert-hf-to-gguf.py on the HF export (the vendored-script route)."""
    if not convert_bin.is_file():
        raise MissingDependencyError(
            f"export.ollama.convert_bin: {convert_bin} not found; copy llama.cpp's converter there "
            "(tools/llama_cpp/Readme.md, `make gguf-help`) or remove convert_bin to write GGUF in-process"
        )
    command = [sys.executable, str(convert_bin), str(hf_dir), "--outfile", str(out), "--outtype", ftype]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ExportError(
            f"{convert_bin}: converter failed (exit {result.returncode}): {lines[-1] if lines else 'no output'}"
        )


def quantize(src: Path, dst: Path, quant: str) -> None:
    """Quantize a GGUF file with llama.cpp (llama-cpp-python's llama_model_quantize)."""
    llama_cpp = quantizer(quant)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[quant])
    params.nthread = os.cpu_count() or 1
    with atomic_output_path(dst) as tmp:
        status = int(llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.pointer(params)))
        if status != 0:
            raise ExportError(f"{src}: llama.cpp quantization to {quant} failed (status {status})")


def write_float_gguf(export: OllamaExportConfig, model: LoadedModel, hf_dir: Path, out: Path, ftype: FloatType) -> None:
    if export.convert_bin is not None:
        run_converter(export.convert_bin, hf_dir, out, ftype)
    else:
        write_gguf(out, model.state_dict, model.config, model.meta, ftype=ftype, name=export.model_name)


def write_model_gguf(export: OllamaExportConfig, model: LoadedModel, hf_dir: Path, gguf_path: Path) -> None:
    """model.gguf in the configured type: float types directly, quantized ones from an f32 GGUF."""
    float_type = FLOAT_TYPES.get(export.quant)
    if float_type is not None:
        with atomic_output_path(gguf_path) as tmp:
            write_float_gguf(export, model, hf_dir, tmp, float_type)
        return
    with tempfile.TemporaryDirectory(dir=gguf_path.parent, prefix=".gguf-") as scratch:
        intermediate = Path(scratch) / "model-f32.gguf"
        write_float_gguf(export, model, hf_dir, intermediate, "f32")
        quantize(intermediate, gguf_path, export.quant)


def write_export(
    export: OllamaExportConfig, model: LoadedModel, sample: SampleSettings | None, digest: str, folder: Path
) -> None:
    """Every file of the export, written into `folder`; export.json (the inputs' fingerprint) last."""
    hf_dir = folder / HF_SUBDIR
    gguf_path = folder / ollama.GGUF_NAME
    log.info("export: Hugging Face directory (%s)", counterpart(model.config))
    export_hf(model.state_dict, model.config, model.meta, hf_dir)
    log.info("export: GGUF (%s)", export.quant)
    write_model_gguf(export, model, hf_dir, gguf_path)
    stop = eot_text(model.meta)
    write_text_atomic(folder / ollama.MODELFILE, ollama.modelfile(export, sample, model.config.block_size, stop))
    write_text_atomic(folder / ollama.README, ollama.readme(export))
    outputs = [gguf_path, folder / ollama.MODELFILE, folder / ollama.README]
    outputs += sorted(path for path in hf_dir.iterdir() if path.is_file() and not path.name.startswith("."))
    ollama.write_sha256sums(folder, outputs)
    marker = {"format": EXPORT_FORMAT, "inputs_sha256": digest, "quant": export.quant}
    write_text_atomic(folder / FINGERPRINT_FILE, json.dumps(marker, indent=2) + "\n")


# Moved into export_dir in this order: the fingerprint last, so that an export stopped between two
# moves is not taken for an up-to-date one.
PUBLISHED = (ollama.GGUF_NAME, ollama.MODELFILE, ollama.README, HF_SUBDIR, ollama.SHA256SUMS, FINGERPRINT_FILE)


def publish(staging: Path, export_dir: Path) -> None:
    """Move the staged export into export_dir (renames within one file system: nothing is copied).
    A folder is swapped whole: the previous one moves into `staging`, which the caller deletes."""
    for name in PUBLISHED:
        target = export_dir / name
        if target.is_dir():
            target.rename(staging / f".previous-{name}")
        os.replace(staging / name, target)


@contextlib.contextmanager
def staging_folder(export_dir: Path) -> Generator[Path]:
    """A hidden folder inside export_dir, deleted afterwards; export_dir itself too when the block
    fails and it was created for this export."""
    created = not export_dir.exists()
    export_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=export_dir))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
                export_dir.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def run_export(export_cfg: ExportConfig, cfg: ExperimentConfig, config_path: Path) -> ExportResult:
    """Export the experiment's model as configured by [export.ollama]; a no-op when up to date."""
    export = export_cfg.ollama
    if not export.enabled:
        raise ExportError(f"{config_path}: export.ollama.enabled is false; set it to true to export")
    check_quant(export, config_path)
    sample = cfg.sample.sample if cfg.sample is not None else None
    source = resolve_source(cfg, config_path)
    export_dir = export.export_dir
    result = ExportResult(
        export_dir=export_dir, gguf_path=export_dir / ollama.GGUF_NAME, hf_dir=export_dir / HF_SUBDIR, skipped=False
    )
    digest = fingerprint(source, export, sample)
    if up_to_date(export_dir, digest):
        log.info("export: %s is up to date (inputs unchanged)", export_dir)
        return dataclasses.replace(result, skipped=True)

    model = source.load()
    counterpart(model.config)  # before anything is written
    written = False
    try:
        with staging_folder(export_dir) as staging:
            write_export(export, model, sample, digest, staging)
            written = True
            publish(staging, export_dir)
    except OSError as exc:
        kept = "" if written else "; nothing in it was changed"
        raise ExportError(f"{export_dir}: cannot write the export ({exc.strerror or summary(exc)}){kept}") from None
    log.info(
        "export: %s written; `ollama create %s -f %s`", export_dir, export.model_name, export_dir / ollama.MODELFILE
    )
    return result
