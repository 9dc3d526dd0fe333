"""The experiment registry: duplicates and unknown names are errors. Each test registers into a
copy of the registry, so no test name reaches the global one other tests and the CLI see."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground import registry
from ml_playground.config import PrepareConfig
from ml_playground.errors import ExperimentError


def _noop(_cfg: PrepareConfig) -> None:
    return None


def isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations until `monkeypatch` undoes its changes go into a copy of the registry."""
    copy = {name: registry.get(name) for name in registry.names()}  # discovered experiments included
    monkeypatch.setattr(registry, "_EXPERIMENTS", copy)


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch)


def test_registrations_in_an_isolated_registry_leave_the_global_one_alone(tmp_path: Path) -> None:
    before = registry.names()
    with pytest.MonkeyPatch.context() as inner:
        isolate(inner)
        registry.register("isolated_test_experiment", tmp_path)(_noop)
        assert registry.names() == sorted([*before, "isolated_test_experiment"])
    assert registry.names() == before
    with pytest.raises(ExperimentError, match="unknown experiment 'isolated_test_experiment'"):
        registry.get("isolated_test_experiment")


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
