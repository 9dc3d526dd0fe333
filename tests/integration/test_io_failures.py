"""Every writer of the package under real write failures (tests/support/io_faults.py): a full disk
(a filled tmpfs where the test may mount one, a file-size limit everywhere) and an unwritable
folder. Each failure is one line naming the folder or file and the operating system's reason, and
the files the writer had written before are exactly as they were, with no temporary file left.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ml_playground.config import SampleConfig, SampleRuntimeConfig
from ml_playground.data.prepare import prepare_corpus
from ml_playground.errors import CheckpointError, DataError, ExportError, MLPlaygroundError
from ml_playground.sample import save_samples
from ml_playground.train.checkpoint import load_checkpoint, save_checkpoint
from ml_playground.train.metrics import MetricsSink, read_scalars
from tests.integration.test_export import export, write_run
from tests.support.io_faults import (
    FULL_DISK_REASONS,
    UNWRITABLE_REASONS,
    SizeLimitedDisk,
    can_mount,
    read_only,
    tmpfs_disk,
    tree,
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Fault:
    """A folder to write in, how to break a folder inside it, and the reasons the error may give."""

    disk: Path
    breaks: Callable[[Path], contextlib.AbstractContextManager[None]]
    reasons: tuple[str, ...]


@pytest.fixture(params=["full tmpfs", "file-size limit", "unwritable folder"])
def fault(request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Generator[Fault]:
    disk = tmp_path / "disk"
    if request.param == "full tmpfs":
        if not can_mount():
            pytest.skip("no tmpfs can be mounted here (needs root with CAP_SYS_ADMIN); the file-size limit case runs")
        with tmpfs_disk(disk) as tmpfs:
            yield Fault(disk=disk, breaks=lambda _folder: tmpfs.full(), reasons=FULL_DISK_REASONS)
        return
    disk.mkdir()
    if request.param == "file-size limit":
        limited = SizeLimitedDisk(disk, capsys)
        yield Fault(disk=disk, breaks=lambda _folder: limited.full(), reasons=FULL_DISK_REASONS)
    else:
        yield Fault(disk=disk, breaks=read_only, reasons=UNWRITABLE_REASONS)


def one_line(error: pytest.ExceptionInfo[MLPlaygroundError], names: Path, reasons: tuple[str, ...]) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert str(names) in message
    assert any(reason in message for reason in reasons), message
    return message


def test_checkpoint(fault: Fault) -> None:
    """torch.save reports a full disk as a RuntimeError: it is still one CheckpointError line."""
    disk = fault.disk
    out_dir = disk / "run"
    write_run(out_dir, seed=0)
    path = out_dir / "ckpt_best.pt"
    before = tree(out_dir)
    later = dataclasses.replace(load_checkpoint(path), iter_num=2)
    with fault.breaks(out_dir), pytest.raises(CheckpointError) as caught:
        save_checkpoint(path, later)
    assert one_line(caught, path, fault.reasons).startswith(f"{path}: cannot write checkpoint (")
    assert tree(out_dir) == before


def test_export(fault: Fault) -> None:
    """A new export (another quant) fails as one line; the previous export is as it was."""
    disk = fault.disk
    write_run(disk / "run")
    export(disk, quant="f16")
    export_dir = disk / "export"
    before = tree(export_dir)
    with fault.breaks(export_dir), pytest.raises(ExportError) as caught:
        export(disk, quant="f32")
    assert one_line(caught, export_dir, fault.reasons).startswith(f"{export_dir}: cannot write the export (")
    assert tree(export_dir) == before


def test_first_export_leaves_no_folder(fault: Fault) -> None:
    disk = fault.disk
    write_run(disk / "run")
    with fault.breaks(disk), pytest.raises(ExportError) as caught:
        export(disk, quant="f16")
    one_line(caught, disk / "export", fault.reasons)
    assert not (disk / "export").exists()


def test_tensorboard(fault: Fault) -> None:
    """A second run's logs cannot be written: one line naming the log folder, before any event file
    is made; the first run's event file is untouched. No traceback from the writer's own thread
    (pytest turns one into a failure)."""
    disk = fault.disk
    first = MetricsSink(disk / "run")
    first.log_eval(1, {"train": 2.0, "val": 2.5})
    first.close()
    logdir = first.logdir
    before = tree(logdir)
    with fault.breaks(logdir), pytest.raises(MLPlaygroundError) as caught:
        MetricsSink(disk / "run")
    assert one_line(caught, logdir, fault.reasons).startswith(f"{logdir}: cannot write TensorBoard logs (")
    assert tree(logdir) == before
    assert read_scalars(logdir)["val/loss"] == [(1, 2.5)]


def test_tensorboard_during_a_run(fault: Fault) -> None:
    """The disk fills (or the folder turns read-only) while a run logs: one line at the next log."""
    sink = MetricsSink(fault.disk / "run")
    sink.log_eval(1, {"train": 2.0, "val": 2.5})
    sink.flush()

    def log_until_it_fails() -> None:
        for step in range(2, 1000):  # until the last free page of the disk is used up
            sink.log_eval(step, {"train": 1.0, "val": 1.5})
            sink.flush()

    with fault.breaks(sink.logdir), pytest.raises(MLPlaygroundError) as caught:
        log_until_it_fails()
    one_line(caught, sink.logdir, fault.reasons)
    with contextlib.suppress(MLPlaygroundError):
        sink.close()
    assert read_scalars(sink.logdir)["val/loss"][0] == (1, 2.5)


def test_tensorboard_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "run" / "logs").mkdir(parents=True)
    (tmp_path / "run" / "logs" / "tb").write_text("not a folder\n", encoding="utf-8")
    with pytest.raises(MLPlaygroundError) as caught:
        MetricsSink(tmp_path / "run")
    logdir = tmp_path / "run" / "logs" / "tb"
    assert str(caught.value) == f"{logdir}: cannot write TensorBoard logs ({logdir} is a file, not a folder)"


def _sample_config(out_dir: Path) -> SampleConfig:
    return SampleConfig(runtime=SampleRuntimeConfig(out_dir=out_dir))


def test_samples(fault: Fault) -> None:
    """All of a sampling run's files or none; earlier samples are untouched."""
    disk = fault.disk
    out_dir = disk / "run"
    save_samples(out_dir, "ckpt_best.pt", _sample_config(out_dir), ["first"])
    folder = out_dir / "samples"
    before = tree(folder)
    texts = ["second", "third"]
    with fault.breaks(folder), pytest.raises(MLPlaygroundError) as caught:
        save_samples(out_dir, "ckpt_best.pt", _sample_config(out_dir), texts)
    assert one_line(caught, folder, fault.reasons).startswith(f"{folder}: cannot write samples (")
    assert tree(folder) == before


def test_prepare(fault: Fault) -> None:
    """Another corpus cannot be prepared: one DataError line; the previous dataset is as it was
    (the lock file's holder pid aside: it says who prepares, not what was prepared)."""
    disk = fault.disk
    corpus = disk / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 50, encoding="utf-8")
    dataset_dir = disk / "ds"
    prepare_corpus(corpus, dataset_dir, tokenizer="char", encoding="gpt2", val_fraction=0.1)
    before = {name: data for name, data in tree(dataset_dir).items() if name != ".prepare.lock"}
    other = disk / "other.txt"
    other.write_text("all the world's a stage, and all the men and women merely players\n" * 50, encoding="utf-8")
    with fault.breaks(dataset_dir), pytest.raises(DataError) as caught:
        prepare_corpus(other, dataset_dir, tokenizer="char", encoding="gpt2", val_fraction=0.1)
    one_line(caught, dataset_dir, fault.reasons)
    assert {name: data for name, data in tree(dataset_dir).items() if name != ".prepare.lock"} == before
