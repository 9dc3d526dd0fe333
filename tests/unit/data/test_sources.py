from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_playground.config import PROJECT_ROOT
from ml_playground.data.sources import download, file_sha256, local_path, resolve_input
from ml_playground.errors import DataError

CORPUS = b"ROMEO:\nWhat light through yonder window breaks?\n\n" * 50


class _Server:
    def __init__(self) -> None:
        self.hits = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                if self.path.split("?")[0] == "/input.txt":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(CORPUS)))
                    self.end_headers()
                    self.wfile.write(CORPUS)
                else:
                    self.send_error(404, "Not Found")

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.close()


def test_download_caches_and_reuses(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "datasets" / "input.txt"
    sha = hashlib.sha256(CORPUS).hexdigest()
    assert download(f"{server.url}/input.txt", dest, timeout_s=5, sha256=sha) == dest
    assert dest.read_bytes() == CORPUS
    assert server.hits == 1
    download(f"{server.url}/input.txt", dest, timeout_s=5, sha256=sha)
    download(f"{server.url}/input.txt", dest, timeout_s=5, sha256=None)
    assert server.hits == 1  # cached copy reused
    download(f"{server.url}/input.txt?v=2", dest, timeout_s=5, sha256=None)
    assert server.hits == 2  # a different URL is fetched again


def test_download_sha_mismatch_and_http_errors(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "input.txt"
    with pytest.raises(DataError, match="sha256 mismatch"):
        download(f"{server.url}/input.txt", dest, timeout_s=5, sha256="0" * 64)
    assert not dest.exists()
    with pytest.raises(DataError, match=r"/missing\.txt: download failed \(HTTP 404"):
        download(f"{server.url}/missing.txt", dest, timeout_s=5, sha256=None)
    server.close()
    with pytest.raises(DataError, match="download failed"):
        download(f"{server.url}/input.txt", dest, timeout_s=5, sha256=None)


def test_local_sources(tmp_path: Path) -> None:
    corpus = tmp_path / "input.txt"
    corpus.write_bytes(CORPUS)
    assert local_path(corpus.as_uri()) == corpus
    assert local_path("ml_playground/experiments") == PROJECT_ROOT / "ml_playground" / "experiments"
    sha = file_sha256(corpus)
    assert resolve_input(corpus.as_uri(), cache=tmp_path / "cache.txt", timeout_s=1, sha256=sha) == corpus
    assert resolve_input(str(corpus), cache=tmp_path / "cache.txt", timeout_s=1, sha256=None) == corpus
    with pytest.raises(DataError, match="sha256 does not match"):
        resolve_input(str(corpus), cache=tmp_path / "cache.txt", timeout_s=1, sha256="1" * 64)
    with pytest.raises(DataError, match=r"missing\.txt: corpus not found"):
        resolve_input(str(tmp_path / "missing.txt"), cache=tmp_path / "cache.txt", timeout_s=1, sha256=None)


def test_fallback_source_is_read_only_when_the_source_is_absent(tmp_path: Path) -> None:
    own, shared = tmp_path / "own" / "input.txt", tmp_path / "shared" / "input.txt"
    cache = tmp_path / "cache.txt"

    with pytest.raises(DataError) as info:
        resolve_input(str(own), cache=cache, timeout_s=1, sha256=None, fallback=str(shared))
    message = str(info.value)
    assert "\n" not in message
    assert f"{shared} (prepare.fallback_source)" in message
    assert f"{own} (prepare.source)" in message

    shared.parent.mkdir()
    shared.write_bytes(CORPUS)
    assert resolve_input(str(own), cache=cache, timeout_s=1, sha256=None, fallback=str(shared)) == shared
    with pytest.raises(DataError, match=r"shared/input\.txt: sha256 does not match"):
        resolve_input(str(own), cache=cache, timeout_s=1, sha256="1" * 64, fallback=str(shared))

    own.parent.mkdir()
    own.write_bytes(CORPUS[:100])
    assert resolve_input(str(own), cache=cache, timeout_s=1, sha256=None, fallback=str(shared)) == own
