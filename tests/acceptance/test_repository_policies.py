"""Policies that hold for the whole repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_PARTS = {"__pycache__", ".venv", "datasets", ".pytest_cache", ".mypy_cache", ".ruff_cache", "out"}
# Created by make targets, not tracked: Readmes may document them.
GENERATED = {".venv", "datasets", "out", "uv.lock"}
DOC_ROOTS = ["ml_playground", "tests", "tools", "docs", "lit_nlp"]


def tracked_files() -> list[Path]:
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True)
    return [ROOT / line for line in listing.stdout.splitlines() if (ROOT / line).exists()]


def test_every_folder_has_a_readme() -> None:
    folders = {
        path.parent
        for path in tracked_files()
        if path.parts[len(ROOT.parts)] in DOC_ROOTS and not SKIP_PARTS.intersection(path.parts)
    }
    # Stub packages under a typings/ folder mirror a third party's layout; typings/ itself has the Readme.
    folders = {folder for folder in folders if "typings" not in folder.parts[:-1]}
    missing = sorted(str(folder.relative_to(ROOT)) for folder in folders if not (folder / "Readme.md").exists())
    assert missing == []


def test_readme_trees_name_existing_entries() -> None:
    """Each `├── name` / `└── name` line in a folder Readme names something that exists there."""
    stale: list[str] = []
    for readme in ROOT.glob("**/Readme.md"):
        if SKIP_PARTS.intersection(readme.relative_to(ROOT).parts):
            continue
        lines = readme.read_text(encoding="utf-8").splitlines()
        if not lines or "```text" not in lines:
            continue
        start = lines.index("```text")
        root_line = lines[start + 1].strip().rstrip("/")
        if root_line not in {".", readme.parent.name}:
            continue  # the tree shows a subfolder; its own entries are checked by its Readme
        for line in lines[start + 2 :]:
            if line.startswith("```"):
                break
            match = re.match(r"^[│ ]*[├└]── ([^ ]+)", line)
            depth = line.find("──") // 4
            if match is None or depth > 0:
                continue
            name = match.group(1).rstrip("/")
            if name in GENERATED:
                continue
            if "*" in name:
                if not any(readme.parent.glob(name)):
                    stale.append(f"{readme.relative_to(ROOT)}: {name}")
            elif not (readme.parent / name).exists():
                stale.append(f"{readme.relative_to(ROOT)}: {name}")
    assert stale == []


def test_project_code_never_reads_shared_folder() -> None:
    pattern = re.compile(r"\.\./" + "shared|/shared/" + "data")
    offenders = [
        str(path.relative_to(ROOT))
        for path in tracked_files()
        if path.suffix in {".py", ".toml", ".cfg", ".sh"} and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_checkpoints_and_metadata_never_execute_code() -> None:
    offenders: list[str] = []
    for path in (ROOT / "ml_playground").rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
            if re.search(r"\bpickle\.loads?\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == []
