"""Every TOML the project ships validates against the schema, and every experiment has one."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground import registry
from ml_playground.config import PROJECT_ROOT
from ml_playground.config_loader import load_experiment_config
from ml_playground.train.checkpoint import MERGED_DIR

_PACKAGE = PROJECT_ROOT / "ml_playground"
KNOWN_EXPERIMENTS = {"bundestag_char", "bundestag_tiktoken", "shakespeare", "shakespeare_lora"}
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
    """The registry holds every experiment folder (one with a preparer.py), the known ones among
    them, and each one's default config loads with the tables its commands need."""
    experiments = _PACKAGE / "experiments"
    folders = {path.parent.name for path in experiments.glob("*/preparer.py")}
    assert folders >= KNOWN_EXPERIMENTS
    # Unit tests may register throwaway experiments in temporary folders; only shipped ones count.
    shipped = {name for name in registry.names() if registry.get(name).folder.is_relative_to(experiments)}
    assert shipped == folders
    for name in shipped:
        experiment = registry.get(name)
        assert experiment.folder == experiments / name
        cfg = load_experiment_config(experiment.default_config)
        assert cfg.prepare is not None
        assert cfg.train is not None
        assert cfg.sample is not None
