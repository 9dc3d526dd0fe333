"""`make quality-ext`: mutation testing with Cosmic Ray, configured in pyproject.toml.

Cosmic Ray reads a top-level [cosmic-ray] table, so the [tool.cosmic-ray] table is copied into
out/cosmic-ray/config.toml. The session database out/cosmic-ray/session.sqlite is created when
absent and resumed otherwise (delete it to start over). Prints the survival rate.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "cosmic-ray"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"  # pyright: ignore[reportUnknownVariableType]
    return str(value)


def write_config() -> Path:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["cosmic-ray"]
    lines = ["[cosmic-ray]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines.append(f"\n[cosmic-ray.{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]  # pyright: ignore[reportUnknownVariableType]
    OUT.mkdir(parents=True, exist_ok=True)
    config = OUT / "config.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def main() -> int:
    config = write_config()
    session = OUT / "session.sqlite"
    if not session.exists():
        subprocess.run(["cosmic-ray", "init", str(config), str(session)], cwd=ROOT, check=True)
    subprocess.run(["cosmic-ray", "exec", str(config), str(session)], cwd=ROOT, check=True)
    rate = subprocess.run(["cr-rate", str(session)], cwd=ROOT, check=True, capture_output=True, text=True)
    print(f"mutation survival rate: {rate.stdout.strip()}% (details: cr-report {session.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
