"""run_export: checkpoint -> hf/ + model.gguf + Modelfile + SHA256SUMS; no-op when unchanged."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch

from ml_playground.config import GPTConfig
from ml_playground.config_loader import parse_experiment_config
from ml_playground.errors import ConfigError, ExportError, MissingDependencyError
from ml_playground.interop.export import run_export
from ml_playground.interop.ollama import sha256_of, sha256sums_match
from ml_playground.model import GPT
from ml_playground.tokenizers import CharTokenizer
from ml_playground.train.checkpoint import Checkpoint, save_checkpoint
from tests.integration.tiny_gpt import CORPUS

pytestmark = pytest.mark.slow


def write_run(out_dir: Path, seed: int = 0, **options: Any) -> None:
    """A tiny char checkpoint; `options` are further GPTConfig fields."""
    itos = sorted(set(CORPUS))
    torch.manual_seed(seed)
    config = GPTConfig(block_size=32, vocab_size=len(itos), n_layer=1, n_head=2, n_embd=32, **options)
    meta = {"kind": "char", "vocab_size": len(itos), "dtype": "uint16", "itos": itos, "version": 1}
    meta |= {"encoding": None, "train_tokens": 0, "val_tokens": 0, "source_sha256": None}
    checkpoint = Checkpoint(
        schema_version=1,
        model=GPT(config).state_dict(),
        arch=config,
        iter_num=1,
        best_val_loss=1.0,
        config={},
        dataset_meta=meta,
    )
    save_checkpoint(out_dir / "ckpt_best.pt", checkpoint)
    assert CharTokenizer(itos).vocab_size == config.vocab_size


def experiment(tmp_path: Path, **ollama: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"enabled": True, "export_dir": str(tmp_path / "export"), "model_name": "tiny"}
    table |= ollama
    return {
        "sample": {"runtime": {"out_dir": str(tmp_path / "run")}, "sample": {"temperature": 0.5, "top_k": 5}},
        "export": {"ollama": table},
    }


def export(tmp_path: Path, **ollama: Any) -> Any:
    cfg = parse_experiment_config(experiment(tmp_path, **ollama), tmp_path / "cfg.toml")
    assert cfg.export is not None
    return run_export(cfg.export, cfg, tmp_path / "cfg.toml")


def test_export_writes_every_file_and_is_a_no_op_when_unchanged(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    result = export(tmp_path, quant="f16", template="{{ .Prompt }}")
    out = tmp_path / "export"
    assert not result.skipped
    for name in ("model.gguf", "Modelfile", "README.md", "SHA256SUMS", "hf/config.json", "hf/tokenizer.json"):
        assert (out / name).is_file(), name
    assert sha256sums_match(out)
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile
    assert "PARAMETER temperature 0.5" in modelfile
    reader = gguf.GGUFReader(out / "model.gguf")
    assert reader.tensors[0].tensor_type == gguf.GGMLQuantizationType.F16

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert export(tmp_path, quant="f16", template="{{ .Prompt }}").skipped
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps

    assert not export(tmp_path, quant="q8_0", template="{{ .Prompt }}").skipped  # a changed setting redoes it
    types = {t.tensor_type for t in gguf.GGUFReader(out / "model.gguf").tensors}
    assert gguf.GGMLQuantizationType.Q8_0 in types
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary files left


def _file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_retrained_checkpoint_is_exported_again(tmp_path: Path) -> None:
    """Same settings, new checkpoint bytes (a further training run): the export is redone and
    carries the new weights."""
    write_run(tmp_path / "run", seed=0)
    assert not export(tmp_path, quant="f32").skipped
    out = tmp_path / "export"
    before = _file_digests(out)
    write_run(tmp_path / "run", seed=1)  # same path and architecture, other weights
    assert not export(tmp_path, quant="f32").skipped
    after = _file_digests(out)
    assert after["model.gguf"] != before["model.gguf"]
    assert after["hf/model.safetensors"] != before["hf/model.safetensors"]
    assert after["Modelfile"] == before["Modelfile"]
    assert sha256sums_match(out)
    torch.manual_seed(1)
    retrained = GPT(GPTConfig(block_size=32, vocab_size=len(set(CORPUS)), n_layer=1, n_head=2, n_embd=32))
    exported = {t.name: t for t in gguf.GGUFReader(out / "model.gguf").tensors}
    embedding = exported["token_embd.weight"].data
    assert torch.equal(torch.from_numpy(embedding.copy()), retrained.wte.weight.detach())
    assert export(tmp_path, quant="f32").skipped  # and then it is up to date again


@pytest.mark.parametrize(
    "damage",
    ["edit Modelfile", "truncate model.gguf", "delete hf/config.json", "delete SHA256SUMS", "delete export.json"],
)
def test_a_damaged_export_folder_is_exported_again(tmp_path: Path, damage: str) -> None:
    """A file of the export edited or deleted (inputs and settings unchanged): the export is
    redone and every file is as the first export wrote it."""
    write_run(tmp_path / "run")
    export(tmp_path, quant="f16")
    out = tmp_path / "export"
    written = _file_digests(out)
    action, name = damage.split(" ")
    target = out / name
    if action == "edit":
        target.write_text(target.read_text(encoding="utf-8") + "PARAMETER temperature 2.0\n", encoding="utf-8")
    elif action == "truncate":
        target.write_bytes(target.read_bytes()[:1000])
    else:
        target.unlink()
    assert not export(tmp_path, quant="f16").skipped
    assert _file_digests(out) == written
    assert export(tmp_path, quant="f16").skipped


LLAMA: dict[str, Any] = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1}


def gguf_architecture(path: Path) -> str:
    field = gguf.GGUFReader(path).fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


@pytest.mark.parametrize(
    ("options", "architecture", "gguf_arch"),
    [
        (LLAMA, "LlamaForCausalLM", "llama"),
        (LLAMA | {"qk_norm": True, "tie_embeddings": False}, "Qwen3ForCausalLM", "qwen3"),
    ],
)
def test_llama_style_checkpoint_exports_as_its_counterpart(
    tmp_path: Path, options: dict[str, Any], architecture: str, gguf_arch: str
) -> None:
    write_run(tmp_path / "run", **options)
    assert not export(tmp_path, quant="q8_0").skipped  # quantized by llama.cpp from an f32 file of that arch
    out = tmp_path / "export"
    assert json.loads((out / "hf" / "config.json").read_text())["architectures"] == [architecture]
    assert gguf_architecture(out / "model.gguf") == gguf_arch
    assert "FROM ./model.gguf" in (out / "Modelfile").read_text()
    assert sha256sums_match(out)
    assert export(tmp_path, quant="q8_0").skipped


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (LLAMA | {"mlp": "relu2"}, "train.model.mlp = 'relu2'"),
        ({"norm": "rmsnorm"}, "train.model.norm = 'rmsnorm'"),
        (LLAMA | {"logit_softcap": 15.0}, "train.model.logit_softcap = 15.0"),
        (LLAMA | {"bias": True}, "train.model.bias = true"),
        ({"tie_embeddings": False}, "train.model.tie_embeddings = false"),
    ],
)
def test_checkpoint_without_a_counterpart_fails_before_writing(
    tmp_path: Path, options: dict[str, Any], named: str
) -> None:
    write_run(tmp_path / "run", **options)
    with pytest.raises(ExportError) as caught:
        export(tmp_path)
    assert str(caught.value).startswith(f"export: no equivalent in Hugging Face / llama.cpp for {named} (")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "export").exists()


def test_disabled_export_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"export\.ollama\.enabled is false"):
        export(tmp_path, enabled=False)


def test_unknown_quant_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"export\.ollama\.quant: unknown type 'q9'"):
        export(tmp_path, quant="q9")


def test_quantizing_without_llama_cpp_fails_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(MissingDependencyError) as caught:
        export(tmp_path, quant="q4_0")
    assert str(caught.value) == (
        "export.ollama.quant 'q4_0' needs llama-cpp-python (dev dependency group): run `make setup`, "
        'or export "f16" / "f32"'
    )
    assert not (tmp_path / "export").exists()


def test_an_export_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "export").write_text("a file\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        export(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'cfg.toml'}: export.ollama.export_dir: {tmp_path / 'export'} is a file, not a folder; "
        "name a folder (or move the file)"
    )


def test_missing_converter_says_how_to_install_it(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    with pytest.raises(MissingDependencyError, match=r"convert_bin: .*not found.*tools/llama_cpp/Readme\.md"):
        export(tmp_path, convert_bin=str(tmp_path / "convert-hf-to-gguf.py"))


STANDIN = Path(__file__).parents[1] / "support" / "converter_standin.py"


def gguf_name_of(path: Path) -> str:
    field = gguf.GGUFReader(path).fields["general.name"]
    return bytes(field.parts[field.data[0]]).decode()


@pytest.mark.parametrize(("quant", "tensor_type"), [("f16", "F16"), ("q8_0", "Q8_0")])
def test_converter_route_runs_the_script_on_the_hf_export(tmp_path: Path, quant: str, tensor_type: str) -> None:
    write_run(tmp_path / "run")
    result = export(tmp_path, convert_bin=str(STANDIN), quant=quant)
    gguf_path = tmp_path / "export" / "model.gguf"
    assert result.gguf_path == gguf_path
    assert gguf_name_of(gguf_path) == "standin"  # written by the converter, not the in-process writer
    types = {t.tensor_type for t in gguf.GGUFReader(gguf_path).tensors}
    assert getattr(gguf.GGMLQuantizationType, tensor_type) in types
    assert sha256sums_match(tmp_path / "export")
    assert not [p.name for p in (tmp_path / "export").iterdir() if p.name.startswith(".")]


def test_failing_converter_is_reported_and_keeps_the_previous_gguf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(tmp_path / "run")
    export(tmp_path, quant="f16")
    gguf_path = tmp_path / "export" / "model.gguf"
    before = gguf_path.read_bytes()
    monkeypatch.setenv("CONVERTER_STANDIN_FAIL", "1")
    with pytest.raises(ExportError, match=r"converter failed \(exit 3\): converter: unsupported tensor layout"):
        export(tmp_path, convert_bin=str(STANDIN), quant="f16")
    assert gguf_path.read_bytes() == before
    assert not [p.name for p in (tmp_path / "export").iterdir() if p.name.startswith(".")]
