"""`ml-playground prepare` under real faults: SIGKILL at each step of the commit, a second
preparation of the same folder, a full disk, a read-only dataset folder. Each leaves the old
dataset intact, the new one complete, or files training refuses, and errors are one line (exit 4).
Unreadable corpus, meta.json and token files are one line too. A document corpus's preparation
killed after some shards keeps the old dataset whole and resumes with those shards."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from ml_playground.data.checks import check_dataset
from ml_playground.data.meta import DatasetMeta, read_meta
from ml_playground.data.prepare import prepare_corpus
from ml_playground.errors import DataError
from tests.support import signal_after
from tests.support.one_line import one_line_error
from tests.support.tiny_training import TEXT, tiny_train_table, train_config

pytestmark = pytest.mark.slow

OLD = TEXT * 3
NEW = OLD.replace("speak", "spaek", 1)  # same characters, same length: same token counts, other content
FILES = ("train.bin", "val.bin", "meta.json")
Preexec = Callable[[], None] | None


def _config(tmp_path: Path, corpus: Path, ds: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(f'[prepare]\ndataset_dir = "{ds}"\nsource = "{corpus}"\ntokenizer = "char"\n', encoding="utf-8")
    return path


def _prepare(
    config: Path, env: dict[str, str] | None = None, preexec: Preexec = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        signal_after.command("prepare", "bundestag_char", "--exp-config", str(config)),
        cwd=signal_after.ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang, not a speed check
        env={**os.environ, **(env or {})},
        preexec_fn=preexec,  # sets a resource limit or drops capabilities before exec
    )


def _files(ds: Path) -> dict[str, bytes]:
    return {name: (ds / name).read_bytes() for name in FILES if (ds / name).exists()}


def _accepted(ds: Path) -> DatasetMeta | None:
    """The metadata when training would accept the folder, else None."""
    data = train_config(tiny_train_table(ds, ds.parent / "out")).data
    try:
        meta = read_meta(data.meta_path)
        check_dataset(data, meta)
    except DataError:
        return None
    return meta


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes], dict[str, bytes]]:
    """An old dataset in ds prepared from OLD, the corpus now NEW, and the files NEW prepares to."""
    corpus, ds = tmp_path / "input.txt", tmp_path / "ds"
    corpus.write_text(NEW, encoding="utf-8")
    prepare_corpus(corpus, tmp_path / "reference", tokenizer="char", encoding="gpt2", val_fraction=0.1)
    corpus.write_text(OLD, encoding="utf-8")
    prepare_corpus(corpus, ds, tokenizer="char", encoding="gpt2", val_fraction=0.1)
    corpus.write_text(NEW, encoding="utf-8")
    old, new = _files(ds), _files(tmp_path / "reference")
    assert old["train.bin"] != new["train.bin"]
    assert len(old["train.bin"]) == len(new["train.bin"])
    return _config(tmp_path, corpus, ds), ds, old, new


@pytest.mark.parametrize(
    ("point", "left"),
    [
        ("ml_playground.data.prepare:_write_split:1", "old"),  # train.bin staged, val.bin being encoded
        ("ml_playground.data.prepare:_retract:1", "no meta"),  # meta.json withdrawn, no bin replaced yet
        ("ml_playground.atomic:fsync_dir:1", "no meta"),  # val.bin replaced, train.bin not
        ("ml_playground.atomic:fsync_dir:2", "no meta"),  # both replaced, meta.json not yet written
        ("ml_playground.data.prepare:write_meta:1", "new"),  # meta.json written, the stamp not
    ],
)
def test_a_preparation_killed_at_any_point_leaves_no_mixture_training_accepts(
    setup: tuple[Path, Path, dict[str, bytes], dict[str, bytes]], point: str, left: str
) -> None:
    config, ds, old, new = setup
    killed = _prepare(config, signal_after.spec(point, "SIGKILL"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    files = _files(ds)
    if left == "old":
        assert files == old
        assert _accepted(ds) is not None
    elif left == "new":
        assert files == new
        assert _accepted(ds) is not None
    else:
        assert "meta.json" not in files
        assert _accepted(ds) is None
        with pytest.raises(DataError, match=r"meta\.json: dataset metadata not found .*run `make prepare`"):
            read_meta(ds / "meta.json")
    again = _prepare(config)
    assert again.returncode == 0, again.stderr
    assert _files(ds) == new
    assert _accepted(ds) is not None
    assert not list(ds.glob(".*.tmp"))


def test_a_second_preparation_of_the_folder_exits_naming_the_first_and_leaves_its_files(
    setup: tuple[Path, Path, dict[str, bytes], dict[str, bytes]],
) -> None:
    config, ds, _old, new = setup
    env = {**os.environ, **signal_after.spec("ml_playground.data.prepare:_write_split:1", "SIGSTOP")}
    first = subprocess.Popen(
        signal_after.command("prepare", "bundestag_char", "--exp-config", str(config)),
        cwd=signal_after.ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _pid, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once it stopped itself mid-preparation
        assert os.WIFSTOPPED(status)
        staged = sorted(ds.glob(".*.tmp"))
        assert staged
        line = one_line_error(_prepare(config), 4)
        assert f"{ds} is being prepared by pid {first.pid}; wait for it to end" in line
        assert sorted(ds.glob(".*.tmp")) == staged  # the second removed nothing of the first's
    finally:
        os.kill(first.pid, signal.SIGCONT)
        _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert _files(ds) == new
    third = _prepare(config)
    assert third.returncode == 0, third.stderr
    assert "up to date" in third.stderr


@contextlib.contextmanager
def _small_disk(folder: Path, size: int) -> Generator[Preexec]:
    """`folder` on a tmpfs of `size` bytes (root); else a file-size limit for the subprocess."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False)
    if mounted.returncode != 0:
        yield lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_and_keeps_the_old_dataset(tmp_path: Path) -> None:
    corpus, ds = tmp_path / "input.txt", tmp_path / "ds"
    with _small_disk(ds, 64 * 1024) as preexec:
        corpus.write_text(OLD, encoding="utf-8")
        config = _config(tmp_path, corpus, ds)
        assert _prepare(config, preexec=preexec).returncode == 0
        old = _files(ds)
        corpus.write_text(TEXT * 40, encoding="utf-8")  # token files of over 64 KiB each
        line = one_line_error(_prepare(config, preexec=preexec), 4)
        assert line.startswith(f"error: {ds}: ")
        assert "No space left on device" in line or "File too large" in line
        assert "run `make prepare` again" in line
        assert _files(ds) == old
        assert _accepted(ds) is not None
        assert not list(ds.glob(".*.tmp"))


@contextlib.contextmanager
def _read_only(folder: Path) -> Generator[None]:
    """`folder` read-only: a read-only bind mount (root ignores permission bits), else its mode."""
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], check=False)
    if mounted.returncode != 0:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_an_unwritable_dataset_folder_is_one_line_and_keeps_the_old_dataset(
    setup: tuple[Path, Path, dict[str, bytes], dict[str, bytes]], tmp_path: Path
) -> None:
    config, ds, old, _new = setup
    with _read_only(ds):
        line = one_line_error(_prepare(config), 4)
        assert line.startswith(f"error: {ds}: ")
        assert "Read-only file system" in line or "Permission denied" in line
        assert _files(ds) == old
    unborn = tmp_path / "locked" / "ds"
    unborn.parent.mkdir()
    with _read_only(unborn.parent):
        line = one_line_error(_prepare(_config(tmp_path, tmp_path / "input.txt", unborn)), 4)
        assert line.startswith(f"error: {unborn}: ")


def _bound_by_permissions() -> Preexec:
    """For a subprocess that permission bits apply to: root's loses the capabilities that override
    them (dropped from the bounding set, so gone after exec); it stays the files' owner."""
    if os.geteuid() != 0:
        return None

    def drop() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
            if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2  # <linux/prctl.h>, <linux/capability.h>


def test_unreadable_corpus_meta_json_and_token_files_areone_line_error(tmp_path: Path) -> None:
    corpus, ds = tmp_path / "input.txt", tmp_path / "ds"
    corpus.write_text(OLD, encoding="utf-8")
    config = _config(tmp_path, corpus, ds)
    assert _prepare(config).returncode == 0
    corpus.chmod(0o000)
    line = one_line_error(_prepare(config, preexec=_bound_by_permissions()), 4)
    assert line.startswith(f"error: {corpus}: Permission denied")

    check = (
        "import sys\n"
        "from ml_playground.data.checks import check_dataset\n"
        "from ml_playground.data.meta import read_meta\n"
        "from ml_playground.errors import DataError\n"
        "from tests.support.tiny_training import tiny_train_table, train_config\n"
        "from pathlib import Path\n"
        "data = train_config(tiny_train_table(Path(sys.argv[1]), Path(sys.argv[1]))).data\n"
        "try:\n"
        "    check_dataset(data, read_meta(data.meta_path))\n"
        "except DataError as exc:\n"
        "    print(exc)\n"
    )

    def checked() -> str:
        result = subprocess.run(
            [sys.executable, "-c", check, str(ds)],
            cwd=signal_after.ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=_bound_by_permissions(),  # drops capabilities before exec
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert checked() == ""  # readable: accepted
    (ds / "train.bin").chmod(0o000)
    assert checked() == f"{ds / 'train.bin'}: cannot read the token file (Permission denied)"
    (ds / "meta.json").chmod(0o000)
    assert checked() == f"{ds / 'meta.json'}: cannot read the dataset metadata (Permission denied)"


def _documents(folder: Path, seed: int) -> None:
    """A .jsonl corpus of 150 short documents (several shards of 200 tokens per split)."""
    words = ["speak", "hear", "citizen", "famish", "resolved", "die", "proceed", "further"]
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"text": " ".join(words[(seed + i * j) % len(words)] for j in range(5 + i % 30))})
        for i in range(150)
    ]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _documents_config(tmp_path: Path, corpus: Path, ds: Path) -> Path:
    path = tmp_path / "docs.toml"
    path.write_text(
        f'[prepare]\ndataset_dir = "{ds}"\nsource = "{corpus}"\ntokenizer = "tiktoken"\nval_fraction = 0.2\n'
        "workers = 2\nshard_tokens = 200\n",
        encoding="utf-8",
    )
    return path


def test_a_killed_document_preparation_keeps_the_old_dataset_and_resumes_its_shards(tmp_path: Path) -> None:
    corpus, ds = tmp_path / "corpus", tmp_path / "ds"
    _documents(corpus, seed=1)
    config = _documents_config(tmp_path, corpus, ds)
    assert _prepare(config).returncode == 0
    old = read_meta(ds / "meta.json")
    _documents(corpus, seed=2)
    (tmp_path / "ref").mkdir()
    reference = _documents_config(tmp_path / "ref", corpus, tmp_path / "ref" / "ds")
    assert _prepare(reference).returncode == 0

    killed = _prepare(config, signal_after.spec("ml_playground.data.prepare:write_progress:3", "SIGKILL"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert read_meta(ds / "meta.json") == old  # the old dataset is whole until the new one commits
    assert _accepted(ds) == old
    finished = {path.name: path.stat().st_ino for path in ds.glob("*.bin") if path.name not in _shard_files(old)}
    assert len(finished) == 3

    again = _prepare(config)
    assert again.returncode == 0, again.stderr
    assert "3 finished shard(s) kept" in again.stderr
    new = read_meta(ds / "meta.json")
    assert new == read_meta(tmp_path / "ref" / "ds" / "meta.json")
    assert all((ds / name).stat().st_ino == inode for name, inode in finished.items())  # kept, not rewritten
    assert sorted(path.name for path in ds.glob("*.bin")) == sorted(_shard_files(new))  # the old shards went
    assert not list(ds.glob(".*.tmp"))


def _shard_files(meta: DatasetMeta) -> set[str]:
    return {shard.file for shards in (meta.train_shards, meta.val_shards) if shards is not None for shard in shards}
