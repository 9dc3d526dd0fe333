"""`make tensorboard`: serve a run's TensorBoard logs on 127.0.0.1 until interrupted."""

from __future__ import annotations

import time
from pathlib import Path

from ml_playground.errors import DataError, MLPlaygroundError


def serve_tensorboard(logdir: Path, port: int) -> None:
    """Blocks; Ctrl-C stops it (the CLI turns that into exit code 130)."""
    if not logdir.is_dir():
        raise DataError(f"{logdir}: TensorBoard log directory not found (training writes out_dir/logs/tb)")
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)])
    try:
        url = board.launch()
    except program.TensorBoardServerException as exc:
        raise MLPlaygroundError(f"tensorboard: cannot serve on 127.0.0.1:{port} ({exc.msg})") from None
    print(f"TensorBoard for {logdir} at {url} (Ctrl-C to stop)", flush=True)
    while True:
        time.sleep(3600)
