"""interop.ollama: Modelfile parameters and SHA256SUMS."""

from __future__ import annotations

from pathlib import Path

from ml_playground.config import OllamaExportConfig, SampleSettings
from ml_playground.interop import ollama


def export_config(tmp_path: Path, template: str | None) -> OllamaExportConfig:
    return OllamaExportConfig(enabled=True, export_dir=tmp_path, model_name="tiny:latest", template=template)


def test_modelfile_has_from_template_and_sampling_parameters(tmp_path: Path) -> None:
    sample = SampleSettings(temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=99)
    text = ollama.modelfile(export_config(tmp_path, "{{ .Prompt }}"), sample, 64, "<|endoftext|>")
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert 'TEMPLATE """{{ .Prompt }}"""' in lines
    assert "PARAMETER temperature 0.7" in lines
    assert "PARAMETER top_k 40" in lines
    assert "PARAMETER top_p 0.9" in lines
    assert "PARAMETER num_predict 99" in lines
    assert "PARAMETER num_ctx 64" in lines
    assert 'PARAMETER stop "<|endoftext|>"' in lines


def test_modelfile_without_template_or_top_p(tmp_path: Path) -> None:
    text = ollama.modelfile(export_config(tmp_path, None), SampleSettings(top_p=None), 32, None)
    assert "TEMPLATE" not in text
    assert "top_p" not in text
    assert "stop" not in text


def test_readme_names_the_model() -> None:
    text = ollama.readme(OllamaExportConfig(enabled=True, export_dir=Path("/x"), model_name="abc"))
    assert "ollama create abc -f Modelfile" in text
    assert "ollama run abc" in text


def test_sha256sums_round_trip_and_detect_changes(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    files = [tmp_path / "model.gguf", tmp_path / "hf" / "config.json"]
    files[0].write_bytes(b"gguf")
    files[1].write_text("{}")
    ollama.write_sha256sums(tmp_path, files)
    listed = (tmp_path / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in listed] == ["hf/config.json", "model.gguf"]
    assert ollama.sha256sums_match(tmp_path)
    files[0].write_bytes(b"changed")
    assert not ollama.sha256sums_match(tmp_path)
