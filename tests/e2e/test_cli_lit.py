"""`ml-playground lit` failures a user meets before any server starts: one line, the right exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ml_playground import registry

ROOT = Path(__file__).resolve().parents[2]


def lit(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ml_playground.cli", "lit", registry.names()[0], "--exp-config", str(config)]
    return subprocess.run([*command, *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_no_checkpoint_is_one_line_exit_5(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[sample.runtime]\nout_dir = "{tmp_path / "out"}"\n', encoding="utf-8")
    result = lit(config, "--port", "5999")
    assert result.returncode == 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "no checkpoint found" in lines[0]
    assert str(tmp_path / "out") in lines[0]


def test_config_without_sample_table_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[prepare]\ndataset_dir = "x"\n', encoding="utf-8")
    result = lit(config)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "[sample]" in result.stderr


def test_a_pretrained_source_is_refused_rather_than_ignored(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[sample.runtime]\nout_dir = "{tmp_path / "out"}"\ninit_from = "gpt2"\n', encoding="utf-8")
    result = lit(config, "--port", "5999")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: sample.runtime.init_from = 'gpt2': `lit` serves the checkpoint")
