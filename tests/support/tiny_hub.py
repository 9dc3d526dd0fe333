"""A tiny Hugging Face hub on 127.0.0.1 for tests: serves the folders under ROOT as model repos
(ROOT/<owner>/<name>/...) and dataset repos (ROOT/datasets/<owner>/<name>/...) with the endpoints
huggingface_hub's `snapshot_download` calls.

  python -m tests.support.tiny_hub ROOT PORT_FILE SECONDS

binds a free port on 127.0.0.1, writes it to PORT_FILE and serves until killed, for SECONDS at
most, and no longer than the process that started it lives (an orphaned hub stops by itself). Endpoints: repo info
(`/api/models/<id>/revision/<rev>`), the file tree (`/api/models/<id>/tree/<rev>`) and file
downloads (`/<id>/resolve/<rev>/<file>`, HEAD and GET). Unknown repos are 404 RepoNotFound, as on
the hub. Every request is logged to stderr, so a test can see which files were fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def files_of(repo: Path) -> list[str]:
    return sorted(str(path.relative_to(repo)) for path in repo.rglob("*") if path.is_file())


def commit_of(repo: Path) -> str:
    digest = hashlib.sha1()
    for name in files_of(repo):
        digest.update(name.encode() + b"\0" + (repo / name).read_bytes())
    return digest.hexdigest()


HUB_SECONDS = 240  # the hub stops by itself after this, even if its test cannot stop it


class Hub(BaseHTTPRequestHandler):
    root: Path

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.command} {self.path}", file=sys.stderr, flush=True)

    def repo_and_rest(self, prefix: str, marker: str) -> tuple[Path, str, str] | None:
        """(repo folder, revision, rest) of `<prefix><owner>/<name><marker><rev>[/rest]`; a dataset
        repository (`/api/datasets/...`, `/datasets/...`) lives in ROOT/datasets/<owner>/<name>."""
        path = unquote(urlsplit(self.path).path)
        folder = self.root
        for kind in ("/api/datasets/", "/datasets/"):
            if prefix in ("/api/models/", "/") and path.startswith(kind):
                path, folder = (prefix + path[len(kind) :], self.root / "datasets")
                break
        if not path.startswith(prefix) or marker not in path:
            return None
        repo_id, _, tail = path[len(prefix) :].partition(marker)
        revision, _, rest = tail.partition("/")
        repo = folder / repo_id
        return (repo, revision, rest) if repo_id and repo.is_dir() else None

    def send_json(self, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def not_found(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Repository not found")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.answer(with_body=True)

    def do_HEAD(self) -> None:
        self.answer(with_body=False)

    def answer(self, *, with_body: bool) -> None:
        info = self.repo_and_rest("/api/models/", "/revision/")
        if info is not None and with_body:
            repo = info[0]
            siblings = [{"rfilename": name} for name in files_of(repo)]
            repo_id = "/".join(repo.parts[-2:])
            self.send_json({"id": repo_id, "sha": commit_of(repo), "siblings": siblings})
            return
        tree = self.repo_and_rest("/api/models/", "/tree/")
        if tree is not None and with_body:
            repo = tree[0]
            entries = [
                {
                    "type": "file",
                    "path": name,
                    "size": (repo / name).stat().st_size,
                    "oid": hashlib.sha1((repo / name).read_bytes()).hexdigest(),
                }
                for name in files_of(repo)
            ]
            self.send_json(entries)
            return
        resolve = self.repo_and_rest("/", "/resolve/")
        if resolve is not None and (resolve[0] / resolve[2]).is_file():
            repo, _, name = resolve
            body = (repo / name).read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit_of(repo))
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)
            return
        self.not_found()


@contextmanager
def tiny_hub(root: Path, log: Path) -> Generator[str]:
    """The tiny hub serving `root` on 127.0.0.1 (bounded in time, stopped by its PID); yields its URL."""
    port_file = root.parent / "hub.port"
    with log.open("w", encoding="utf-8") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.support.tiny_hub", str(root), str(port_file), str(HUB_SECONDS)],
            cwd=Path(__file__).resolve().parents[2],
            stderr=log_file,
        )
        try:
            deadline = time.monotonic() + 30
            while not port_file.is_file() or not port_file.read_text(encoding="utf-8"):
                assert server.poll() is None, "the tiny hub exited"
                assert time.monotonic() < deadline, "the tiny hub did not start"
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port_file.read_text(encoding='utf-8')}"
        finally:
            server.kill()  # the hub itself, by its PID (a wrapper such as timeout would orphan it)
            server.wait(timeout=10)


def stop_when_done(server: ThreadingHTTPServer, seconds: float, parent: int) -> None:
    """Shut `server` down after `seconds` or as soon as `parent` is no longer this process's parent."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and os.getppid() == parent:
        time.sleep(0.2)
    server.shutdown()


def main(root: str, port_file: str, seconds: float) -> None:
    Hub.root = Path(root)
    with ThreadingHTTPServer(("127.0.0.1", 0), Hub) as server:
        watchdog = threading.Thread(target=stop_when_done, args=(server, seconds, os.getppid()), daemon=True)
        watchdog.start()
        Path(port_file).write_text(str(server.server_address[1]), encoding="utf-8")
        server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
