"""TOML -> validated `ExperimentConfig`. The only module that reads configuration files.

Every schema violation is collected and reported in one `ConfigError` whose message names the
file and each dotted key, e.g. `cfg.toml: train.optim.learning_rate: Input should be a valid
number (got str '3e-4x')`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from ml_playground.config import ExperimentConfig
from ml_playground.errors import ConfigError

T = TypeVar("T")

_ADAPTER: TypeAdapter[ExperimentConfig] = TypeAdapter(ExperimentConfig)
# Keys of earlier versions: what an old config reads instead of a bare "unknown key".
_REPLACED = {
    "train.hf_model": "[train.hf_model] is gone: name the LoRA base in [train.model] init_from "
    "(model_name_or_path's value) and move merge_on_save to [train.peft]",
}


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def format_validation_error(path: Path | str, error: ValidationError) -> str:
    """One line naming the file (or what was read) and every offending dotted key."""
    problems: list[str] = []
    for item in error.errors(include_url=False):
        if item["type"] == "default_factory_not_called":  # a size following a key that failed: that key is named
            continue
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] in {"extra_forbidden", "unexpected_keyword_argument"}:
            message = _REPLACED.get(key, "unknown key")
        elif item["type"] in {"missing", "missing_keyword_argument"}:
            message = "required key is missing"
        elif item["type"] not in {"value_error", "assertion_error"}:
            message = f"{message} (got {_describe(item['input'])})"
        else:
            message = message.removeprefix("Value error, ")
        problems.append(f"{key}: {message}" if key else message)
    return f"{path}: " + "; ".join(problems)


def parse_experiment_config(data: dict[str, Any], path: Path) -> ExperimentConfig:
    """Validate an already parsed TOML document; `path` is used in error messages."""
    try:
        # JSON mode: strict scalars, while tables (dicts) still build the nested dataclasses.
        # TOML dates/times have no JSON form; as strings they fail validation with their key.
        return _ADAPTER.validate_json(json.dumps(data, default=str))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def load_experiment_config(path: Path) -> ExperimentConfig:
    """Read and validate one experiment TOML file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        # utf-8-sig: a byte-order mark (as some Windows editors save) is not part of the TOML.
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    return parse_experiment_config(data, path)


def read_named_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file a config key names; `what` ("sample.sample.start: prompt file")
    opens each one-line error."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None


def require(table: T | None, path: Path, name: str) -> T:
    """The table `name` of the config file at `path`, which the command needs (None: it is absent)."""
    if table is None:
        raise ConfigError(f"{path}: {name}: table [{name}] is required for this command")
    return table
