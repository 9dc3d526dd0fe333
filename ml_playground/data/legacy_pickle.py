"""Reading legacy nanoGPT `meta.pkl` files without executing them.

A pickle can construct any object and call any function on load. The unpickler here refuses
every global lookup, so only plain containers and scalars (dict, list, tuple, str, int, float,
bool, None, bytes, set) can come out of it; anything else is refused with a DataError.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from ml_playground.errors import DataError


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str, /) -> object:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain containers are allowed")

    def persistent_load(self, pid: object, /) -> object:
        raise pickle.UnpicklingError("refusing persistent ids: only plain containers are allowed")


def load_plain_pickle(path: Path) -> object:
    """Unpickle `path` admitting only plain containers; anything else is a DataError, never run."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: unsafe or invalid pickle ({exc})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as exc:
        raise DataError(f"{path}: corrupt pickle ({type(exc).__name__}: {exc})") from None
