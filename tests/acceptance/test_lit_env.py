"""The LIT environment is an isolated uv project whose lock stays in step with the core package."""

from __future__ import annotations

import ast
import subprocess
import tomllib

from ml_playground.analysis.lit_launcher import find_uv
from ml_playground.config import PROJECT_ROOT

LIT_PROJECT = PROJECT_ROOT / "lit_nlp"


def test_lit_lock_is_current() -> None:
    uv = find_uv()
    assert uv is not None, "uv is required"
    result = subprocess.run(
        [uv, "lock", "--check", "--offline", "--project", str(LIT_PROJECT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"lit_nlp/uv.lock is stale: run `uv lock --project lit_nlp`\n{result.stderr}"


def test_lit_project_pins_numpy_1_and_uses_the_core_by_path() -> None:
    project = tomllib.loads((LIT_PROJECT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "numpy>=1.26,<2" in project["project"]["dependencies"]
    assert project["tool"]["uv"]["sources"]["ml-playground"] == {"path": "..", "editable": True}
    core = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert not any(dep.startswith("lit-nlp") for dep in core["project"]["dependencies"])


def test_lit_nlp_folder_never_shadows_the_lit_package() -> None:
    assert not (LIT_PROJECT / "__init__.py").exists()


def test_core_modules_never_import_lit_nlp() -> None:
    """Only the modules that run inside the LIT environment may import lit_nlp."""
    lit_env_modules = {"lit_model.py", "lit_dataset.py", "lit_server.py"}
    offenders = []
    for path in (PROJECT_ROOT / "ml_playground").rglob("*.py"):
        if path.parent.name == "analysis" and path.name in lit_env_modules:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module]
            if any(name == "lit_nlp" or name.startswith("lit_nlp.") for name in names):
                offenders.append(str(path.relative_to(PROJECT_ROOT)))
    assert offenders == []
