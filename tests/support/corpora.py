"""Small document corpora for tests: parquet files written with pyarrow (typed at this boundary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(path: Path, columns: dict[str, list[Any]], row_group_size: int | None = None) -> Path:
    """A parquet file with these columns (pyarrow infers each column's type)."""
    table = cast("Any", pa.table(columns))
    pq.write_table(table, path, row_group_size=row_group_size)
    return path
