"""A loopback port reserved for a server a test starts, so no other process can take it first."""

from __future__ import annotations

import socket
from collections.abc import Generator
from contextlib import contextmanager


@contextmanager
def reserved_port() -> Generator[int]:
    """A port on 127.0.0.1 bound (not listening) with SO_REUSEADDR for the block. On Linux an
    ordinary bind to it fails and the OS hands it to no one asking for a free port, while a
    server that sets SO_REUSEADDR (Python's HTTPServer, werkzeug: LIT, TensorBoard) binds and
    listens on it: the port stays ours from the probe to the server's start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])
