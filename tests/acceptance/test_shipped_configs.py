"""Every TOML the project ships validates against the schema, and every experiment has one."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground import registry
from ml_playground.config import PROJECT_ROOT
from ml_playground.config_loader import load_experiment_config
from ml_playground.train.checkpoint import MERGED_DIR

_PACKAGE = PROJECT_ROOT / "ml_playground"
SHIPPED: list[Path] = sorted(
    [*(_PACKAGE / "configs").glob("*.toml"), *(_PACKAGE / "experiments").glob("*/config.toml")]
)


def test_configs_are_shipped() -> None:
    names = {path.name for path in SHIPPED}
    assert {"shakespeare_cpu.toml", "config.toml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(Path(p).relative_to(PROJECT_ROOT)))
def test_shipped_config_loads(path: Path) -> None:
    cfg = load_experiment_config(path)
    assert cfg.prepare is not None
    assert cfg.train is not None
    assert cfg.sample is not None
    # train reads what prepare writes; sample reads what train writes (a LoRA run: its merged model)
    assert cfg.train.data.dataset_dir == cfg.prepare.dataset_dir
    written = cfg.train.runtime.out_dir
    if cfg.train.hf_model is not None:
        assert cfg.train.hf_model.merge_on_save
        written = written / MERGED_DIR
    assert cfg.sample.runtime.out_dir == written


def test_every_experiment_has_a_valid_default_config() -> None:
    for name in registry.names():
        experiment = registry.get(name)
        if experiment.folder.is_relative_to(_PACKAGE / "experiments"):
            load_experiment_config(experiment.default_config)
