"""Experiment registry: each `ml_playground/experiments/<name>/preparer.py` registers itself.

Discovery scans the experiments package, so adding an experiment needs no central list.
Registering a name twice is an error; an unknown name lists the known ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ml_playground.config import PrepareConfig
from ml_playground.errors import ExperimentError

# A preparer turns [prepare] into train.bin / val.bin / meta.json under dataset_dir.
Preparer = Callable[[PrepareConfig], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Experiment:
    name: str
    preparer: Preparer
    folder: Path  # ml_playground/experiments/<name>/

    @property
    def default_config(self) -> Path:
        return self.folder / "config.toml"


_EXPERIMENTS: dict[str, Experiment] = {}
_discovered = False


def register(name: str, folder: Path) -> Callable[[Preparer], Preparer]:
    """Decorator: `@register("shakespeare", Path(__file__).parent)` on the experiment's preparer."""

    def decorate(preparer: Preparer) -> Preparer:
        if name in _EXPERIMENTS:
            raise ExperimentError(f"experiment {name!r} is registered twice ({_EXPERIMENTS[name].folder} and {folder})")
        _EXPERIMENTS[name] = Experiment(name=name, preparer=preparer, folder=folder)
        return preparer

    return decorate


def discover() -> None:
    """Import every `ml_playground.experiments.<name>.preparer` module once."""
    global _discovered
    if _discovered:
        return
    import ml_playground.experiments as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.ispkg:
            module_name = f"{package.__name__}.{info.name}.preparer"
            if importlib.util.find_spec(module_name) is not None:
                importlib.import_module(module_name)
    _discovered = True


def names() -> list[str]:
    discover()
    return sorted(_EXPERIMENTS)


def get(name: str) -> Experiment:
    discover()
    try:
        return _EXPERIMENTS[name]
    except KeyError:
        known = ", ".join(names()) or "none"
        raise ExperimentError(f"unknown experiment {name!r}; known experiments: {known}") from None
