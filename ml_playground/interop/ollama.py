"""Ollama packaging: Modelfile, a short README and SHA256SUMS beside the GGUF file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ml_playground.atomic import write_text_atomic
from ml_playground.config import OllamaExportConfig, SampleSettings

MODELFILE = "Modelfile"
README = "README.md"
SHA256SUMS = "SHA256SUMS"
GGUF_NAME = "model.gguf"


def modelfile(export: OllamaExportConfig, sample: SampleSettings | None, context: int, stop: str | None) -> str:
    """`FROM ./model.gguf`, TEMPLATE when configured, PARAMETERs from [sample.sample]."""
    lines = [f"FROM ./{GGUF_NAME}"]
    if export.template is not None:
        lines.append(f'TEMPLATE """{export.template}"""')
    lines.append(f"PARAMETER num_ctx {context}")
    if sample is not None:
        lines.append(f"PARAMETER temperature {sample.temperature}")
        if sample.top_k is not None:
            lines.append(f"PARAMETER top_k {sample.top_k}")
        if sample.top_p is not None:
            lines.append(f"PARAMETER top_p {sample.top_p}")
        lines.append(f"PARAMETER num_predict {sample.max_new_tokens}")
    if stop is not None:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join(lines) + "\n"


def readme(export: OllamaExportConfig) -> str:
    name = export.model_name
    return (
        f"# {name}\n\n"
        f"GGUF export ({export.quant}) of an ml-playground model, with a Hugging Face copy in `hf/`.\n\n"
        "```bash\n"
        "sha256sum -c SHA256SUMS\n"
        f"ollama create {name} -f Modelfile\n"
        f'ollama run {name} "Once upon a time"\n'
        "```\n"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sha256sums(export_dir: Path, files: list[Path]) -> None:
    """`sha256sum -c`-compatible list of `files` (paths relative to export_dir)."""
    lines = [f"{sha256_of(path)}  {path.relative_to(export_dir).as_posix()}\n" for path in sorted(files)]
    write_text_atomic(export_dir / SHA256SUMS, "".join(lines))


def sha256sums_match(export_dir: Path) -> bool:
    """True when SHA256SUMS exists and every file it lists is present with that digest."""
    sums = export_dir / SHA256SUMS
    if not sums.is_file():
        return False
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        path = export_dir / name
        if not path.is_file() or sha256_of(path) != digest:
            return False
    return True
