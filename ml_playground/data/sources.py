"""Where a corpus comes from: a local file, a file:// URL, or an http(s):// URL cached locally; or
files of a Hugging Face dataset (hf://datasets/...), downloaded with huggingface_hub.

Downloads stream to disk with a timeout, are checked against an optional sha256 pin and are
written atomically; a cached copy is reused when it came from the same URL (and matches the pin).
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ml_playground.atomic import atomic_binary_writer, write_text_atomic
from ml_playground.config import project_path
from ml_playground.errors import DataError, summary
from ml_playground.progress import progress_bar

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


def local_path(source: str) -> Path:
    """A file path or file:// URL as a Path; relative paths resolve against the project root."""
    if source.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(source).path))
    return project_path(source)


def file_sha256(path: Path) -> str:
    """Streaming sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _cache_is_fresh(dest: Path, url: str, sha256: str | None) -> bool:
    marker = dest.with_name(dest.name + ".url")
    if not dest.is_file() or not marker.is_file() or marker.read_text(encoding="utf-8").strip() != url:
        return False
    return sha256 is None or file_sha256(dest) == sha256


def download(url: str, dest: Path, *, timeout_s: float, sha256: str | None) -> Path:
    """Fetch `url` into `dest` unless a fresh copy is already there; returns `dest`."""
    if _cache_is_fresh(dest, url, sha256):
        log.info("using cached %s (from %s)", dest, url)
        return dest
    log.info("downloading %s -> %s", url, dest)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, atomic_binary_writer(dest) as out:
            length = response.headers.get("Content-Length")
            with progress_bar(int(length) if length else None, "download", unit="B", unit_scale=True) as bar:
                while block := response.read(_BLOCK):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
            if sha256 is not None and digest.hexdigest() != sha256:
                raise DataError(
                    f"{url}: sha256 mismatch (prepare.source_sha256 is {sha256}, download has {digest.hexdigest()})"
                )
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DataError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
    except urllib.error.URLError as exc:
        raise DataError(f"{url}: download failed ({exc.reason})") from None
    except TimeoutError:
        raise DataError(f"{url}: download timed out after {timeout_s}s (prepare.download_timeout_s)") from None
    write_text_atomic(dest.with_name(dest.name + ".url"), url + "\n")
    return dest


def resolve_input(
    source: str, *, cache: Path, timeout_s: float, sha256: str | None, fallback: str | None = None
) -> Path:
    """The local corpus file for a `[prepare].source` that is a path or URL (not "bundled").

    A file `source` that does not exist gives way to `fallback` ([prepare].fallback_source), with
    a line saying which file is read."""
    if source.startswith(("http://", "https://")):
        return download(source, cache, timeout_s=timeout_s, sha256=sha256)
    path = local_path(source)
    if not path.is_file() and fallback is not None:
        shared = local_path(fallback)
        if not shared.is_file():
            raise DataError(
                f"corpus not found: put a UTF-8 text file at {shared} (prepare.fallback_source) "
                f"or at {path} (prepare.source)"
            )
        log.info("%s not found: reading %s (prepare.fallback_source)", path, shared)
        path = shared
    if not path.is_file():
        raise DataError(f"{path}: corpus not found (prepare.source = {source!r}); put a UTF-8 text file there")
    if sha256 is not None and file_sha256(path) != sha256:
        raise DataError(f"{path}: sha256 does not match prepare.source_sha256 ({sha256})")
    return path


HUB_DATASET_PREFIX = "hf://datasets/"


def hub_dataset(source: str) -> tuple[Path, str]:
    """An `hf://datasets/<owner>/<name>/<pattern>` source: the snapshot folder holding the files
    that match `pattern` (downloaded into huggingface_hub's cache when missing; HF_ENDPOINT, HF_HOME
    and HF_HUB_OFFLINE apply) and the pattern."""
    from huggingface_hub import snapshot_download  # pyright: ignore[reportUnknownVariableType]  # a dict[Unknown] parameter in its overloads

    parts = source[len(HUB_DATASET_PREFIX) :].split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise DataError(f"prepare.source {source!r}: expected hf://datasets/<owner>/<name>/<file pattern>")
    repo_id, pattern = f"{parts[0]}/{parts[1]}", parts[2]
    log.info("prepare.source: fetching %s from the Hugging Face dataset %s", pattern, repo_id)
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=[pattern])), pattern
    except (OSError, ValueError) as exc:  # offline, unreachable, unknown or gated repository
        raise DataError(
            f"prepare.source {source!r}: cannot download it from the Hugging Face hub "
            f"({type(exc).__name__}: {summary(exc)}); a hub dataset needs the network (or its files in the cache)"
        ) from None
