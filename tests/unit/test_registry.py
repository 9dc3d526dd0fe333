from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground import registry
from ml_playground.config import PrepareConfig
from ml_playground.errors import ExperimentError


def _noop(_cfg: PrepareConfig) -> None:
    return None


def test_duplicate_registration_is_an_error(tmp_path: Path) -> None:
    registry.register("dup_test_experiment", tmp_path)(_noop)
    with pytest.raises(ExperimentError, match="registered twice"):
        registry.register("dup_test_experiment", tmp_path)(_noop)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ExperimentError) as info:
        registry.get("no_such_experiment")
    message = str(info.value)
    assert "no_such_experiment" in message
    for name in registry.names():
        assert name in message


def test_experiment_default_config_path(tmp_path: Path) -> None:
    registry.register("path_test_experiment", tmp_path)(_noop)
    assert registry.get("path_test_experiment").default_config == tmp_path / "config.toml"
