"""`make quality-ext`: mutation testing with Cosmic Ray, configured by [tool.mutation] in pyproject.toml.

Each module in [tool.mutation.modules] is mutated under its own targeted tests, in its own Cosmic
Ray session (out/cosmic-ray/<module>.sqlite). In order:

1. Baseline: every module's tests run unmutated; if one fails, nothing is mutated (exit 2), since
   a broken environment would "kill" every mutant.
2. Sessions: a session is resumed only if the sha256 of its module, its test files, the conftest.py
   files above them, tests/support/ and the settings is the one it was made with; otherwise it
   starts anew. Mutants of excluded operators, and those listed in the equivalents file (with the
   reason each cannot change behaviour), are marked skipped and never run.
3. Mutants run in parallel: one worker per core (tools/mutation_worker.py, Cosmic Ray's HTTP
   worker, each in its own copy of the project under out/cosmic-ray/workers/), fed by Cosmic Ray's
   `http` distributor.
4. Report: every surviving mutant (file:line, operator, diff), the survival rate per module and
   overall (survived / (killed + survived)); exit 1 if the overall rate is above
   `max-survival-rate`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from cosmic_ray.commands import execute, init
from cosmic_ray.config import ConfigDict
from cosmic_ray.mutating import mutate_code
from cosmic_ray.plugins import get_operator
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import (
    TestOutcome,
    WorkerOutcome,
    WorkItem,
    WorkResult,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "cosmic-ray"
# --assert=plain: a failing assert fails the same, without rewriting (recompiling) each test module
# for every mutant.
TEST_COMMAND = "python -m pytest -x -q -p no:cacheprovider --assert=plain"
# What a worker's copy of the project needs to import the package and run its tests.
COPIED = ("ml_playground", "tests", "pyproject.toml")


@dataclass(frozen=True)
class Equivalent:
    """Mutants that cannot change behaviour: their module, operator (a regular expression), the
    source line they change and that line once mutated (both stripped; no `mutant`: any), and why."""

    module: str
    operator: str
    line: str
    reason: str
    mutant: str = ""


@dataclass(frozen=True)
class Settings:
    modules: dict[str, tuple[str, ...]]
    max_survival_rate: float
    timeout: float
    exclude_operators: tuple[str, ...]
    equivalents_file: Path
    equivalents: tuple[Equivalent, ...]

    @classmethod
    def read(cls) -> Settings:
        table = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutation"]
        equivalents_file = ROOT / table["equivalents"]
        rows = tomllib.loads(equivalents_file.read_text(encoding="utf-8")).get("equivalent", [])
        return cls(
            modules={module: tuple(tests) for module, tests in table["modules"].items()},
            max_survival_rate=float(table["max-survival-rate"]),
            timeout=float(table["timeout"]),
            exclude_operators=tuple(table["exclude-operators"]),
            equivalents_file=equivalents_file,
            equivalents=tuple(Equivalent(**row) for row in rows),
        )


@dataclass
class Tally:
    killed: int = 0
    survived: list[tuple[WorkItem, WorkResult]] = field(default_factory=list)
    equivalent: int = 0
    excluded: int = 0
    # Mutants Cosmic Ray's operator failed to write (its parser's limits), never tested.
    unwritable: list[tuple[WorkItem, WorkResult]] = field(default_factory=list)
    broken: list[tuple[WorkItem, WorkResult]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        tested = self.killed + len(self.survived)
        return 100.0 * len(self.survived) / tested if tested else 0.0


def session_name(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def fingerprint(module: str, tests: Sequence[str], settings: Settings) -> str:
    """sha256 of what a session's results depend on: the module, its tests (with the conftest.py
    files above them and tests/support/), the operators, its equivalents, the timeout, Cosmic Ray's version."""
    files = {ROOT / module, *(ROOT / test for test in tests), *sorted((ROOT / "tests" / "support").rglob("*.py"))}
    for test in tests:
        for folder in (ROOT / test).parents:
            if (folder / "conftest.py").is_file():
                files.add(folder / "conftest.py")
            if folder == ROOT:
                break
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    equivalents = [e.__dict__ for e in settings.equivalents if e.module == module]
    options = [settings.exclude_operators, settings.timeout, equivalents]
    digest.update(json.dumps([options, version("cosmic-ray")], sort_keys=True).encode())
    return digest.hexdigest()


def cosmic_ray_config(module: str, tests: Sequence[str], settings: Settings, urls: Sequence[str]) -> ConfigDict:
    config = ConfigDict()
    config.update(
        {
            "module-path": module,
            "timeout": settings.timeout,
            "excluded-modules": [],
            "test-command": f"{TEST_COMMAND} {' '.join(tests)}",
            "distributor": {"name": "http", "http": {"worker-urls": list(urls)}},
        }
    )
    return config


def prepare_session(module: str, tests: Sequence[str], settings: Settings) -> Path:
    """The module's session: resumed if its fingerprint holds, else made anew with excluded and
    equivalent mutants marked skipped."""
    session = OUT / f"{session_name(module)}.sqlite"
    stamp = session.with_suffix(".sha256")
    digest = fingerprint(module, tests, settings)
    if session.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == digest:
        return session
    stamp.unlink(missing_ok=True)
    session.unlink(missing_ok=True)
    with use_db(str(session), WorkDB.Mode.create) as db:
        init(module_paths=[Path(module)], work_db=db, operator_cfgs={})
        skip_unwanted(db, module, settings)
    stamp.write_text(digest, encoding="utf-8")
    return session


def skip_unwanted(db: WorkDB, module: str, settings: Settings) -> None:
    excluded = re.compile("|".join(f"(?:{pattern})" for pattern in settings.exclude_operators))
    source = (ROOT / module).read_text(encoding="utf-8")
    lines = source.splitlines()
    annotations = function_annotations(source)
    for item in db.pending_work_items:
        (mutation,) = item.mutations
        if excluded.fullmatch(mutation.operator_name):
            db.set_result(item.job_id, WorkResult(output="excluded operator", worker_outcome=WorkerOutcome.SKIPPED))
            continue
        reason = next((UNEVALUATED for span in annotations if span[0] <= tuple(mutation.start_pos) < span[1]), None)
        equivalent = match_equivalent(mutation, module, source, lines, settings.equivalents)
        reason = reason or (equivalent.reason if equivalent is not None else None)
        if reason is not None:
            result = WorkResult(output=f"equivalent: {reason}", worker_outcome=WorkerOutcome.SKIPPED)
            db.set_result(item.job_id, result)


UNEVALUATED = "a function's annotation: under `from __future__ import annotations` it is never evaluated"


def function_annotations(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, column) of every parameter and return annotation of the module's
    functions, if the module postpones annotations; class fields are not among them (pydantic and
    dataclasses evaluate those)."""
    tree = ast.parse(source)
    future = [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "__future__"]
    if not any(alias.name == "annotations" for node in future for alias in node.names):
        return []
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]
            annotations = [a.annotation for a in every if a is not None and a.annotation is not None]
            for annotation in [*annotations, node.returns]:
                if annotation is not None and annotation.end_lineno is not None:
                    start = (annotation.lineno, annotation.col_offset)
                    spans.append((start, (annotation.end_lineno, annotation.end_col_offset or 0)))
    return spans


def match_equivalent(
    mutation: Any, module: str, source: str, lines: list[str], equivalents: Sequence[Equivalent]
) -> Equivalent | None:
    row = mutation.start_pos[0] - 1
    candidates = [
        e
        for e in equivalents
        if e.module == module and re.fullmatch(e.operator, mutation.operator_name) and e.line == lines[row].strip()
    ]
    if not candidates:
        return None
    mutated = mutate_code(source, get_operator(mutation.operator_name)(**mutation.operator_args), mutation.occurrence)
    mutant_line = mutated.splitlines()[row].strip()
    return next((e for e in candidates if e.mutant in ("", mutant_line)), None)


def copy_project(destination: Path) -> None:
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "datasets"))
        else:
            shutil.copy2(source, destination / name)


@contextmanager
def workers(count: int) -> Iterator[list[str]]:
    """`count` mutation workers, each in its own copy of the project; yields their URLs."""
    processes: list[subprocess.Popen[str]] = []
    try:
        for index in range(count):
            copy = OUT / "workers" / str(index)
            copy_project(copy)
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(ROOT / "tools" / "mutation_worker.py"), str(copy)],
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                )
            )
        urls = []
        for process in processes:
            assert process.stdout is not None
            port = process.stdout.readline().strip()
            if not port.isdigit():
                raise SystemExit(f"mutation worker {process.pid} did not start (exit code {process.wait()})")
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()


def baseline(module: str, tests: Sequence[str], settings: Settings, urls: Sequence[str]) -> None:
    """Runs the module's tests unmutated on a worker; exits 2 with their output if they fail."""
    with tempfile.TemporaryDirectory() as folder, use_db(str(Path(folder) / "baseline.sqlite")) as db:
        db.add_work_item(WorkItem(mutations=[], job_id="baseline"))
        execute(db, cosmic_ray_config(module, tests, settings, urls[:1]))
        ((_, result),) = db.results
    if result.test_outcome != TestOutcome.SURVIVED:
        print(f"baseline failed: the tests of {module} fail unmutated; nothing was mutated", file=sys.stderr)
        print(result.output, file=sys.stderr)
        raise SystemExit(2)


def tally(session: Path) -> Tally:
    counts = Tally()
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                if result.output.startswith("equivalent"):
                    counts.equivalent += 1
                else:
                    counts.excluded += 1
            elif result.worker_outcome == WorkerOutcome.EXCEPTION and "cosmic_ray/operators/" in (result.output or ""):
                counts.unwritable.append((item, result))
            elif result.worker_outcome != WorkerOutcome.NORMAL or result.test_outcome == TestOutcome.INCOMPETENT:
                counts.broken.append((item, result))
            elif result.test_outcome == TestOutcome.SURVIVED:
                counts.survived.append((item, result))
            else:
                counts.killed += 1
    return counts


def describe(item: WorkItem, result: WorkResult) -> str:
    (mutation,) = item.mutations
    diff = [line for line in (result.diff or "").splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    head = f"{mutation.module_path}:{mutation.start_pos[0]} {mutation.operator_name}"
    return "\n".join([head, *(f"    {line}" for line in diff)])


def main(only: Sequence[str]) -> int:
    """Mutates every configured module, or only those named in `only`."""
    settings = Settings.read()
    unknown = [module for module in only if module not in settings.modules]
    if unknown:
        raise SystemExit(f"not in [tool.mutation.modules]: {', '.join(unknown)}")
    if only:
        settings = replace(settings, modules={module: settings.modules[module] for module in only})
    OUT.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    started = time.monotonic()
    tallies: dict[str, Tally] = {}
    with workers(cores) as urls:
        for module, tests in settings.modules.items():
            baseline(module, tests, settings, urls)
        print(f"baseline passed for {len(settings.modules)} modules ({time.monotonic() - started:.0f} s)", flush=True)
        for module, tests in settings.modules.items():
            session = prepare_session(module, tests, settings)
            with use_db(str(session), WorkDB.Mode.open) as db:
                execute(db, cosmic_ray_config(module, tests, settings, urls))
            tallies[module] = tally(session)
            print(f"{module}: done ({time.monotonic() - started:.0f} s)", flush=True)
    return report(tallies, settings, time.monotonic() - started, cores)


def report(tallies: dict[str, Tally], settings: Settings, seconds: float, cores: int) -> int:
    for counts in tallies.values():
        for item, result in counts.survived:
            print("SURVIVED " + describe(item, result))
    for counts in tallies.values():
        for item, result in counts.unwritable:
            last = (result.output or "").strip().splitlines()[-1:]
            print(f"NOT WRITTEN {describe(item, result)} (Cosmic Ray: {''.join(last)})")
    broken = [pair for counts in tallies.values() for pair in counts.broken]
    for item, result in broken:
        print("ERROR " + describe(item, result) + "\n" + (result.output or "")[-2000:])
    total = Tally()
    print(f"\n{'module':<36} {'killed':>7} {'survived':>9} {'equivalent':>11} {'excluded':>9} {'rate %':>7}")
    for module, counts in tallies.items():
        total.killed += counts.killed
        total.survived += counts.survived
        total.equivalent += counts.equivalent
        total.excluded += counts.excluded
        print(
            f"{module:<36} {counts.killed:>7} {len(counts.survived):>9} {counts.equivalent:>11} "
            f"{counts.excluded:>9} {counts.rate:>7.1f}"
        )
    print(
        f"{'overall':<36} {total.killed:>7} {len(total.survived):>9} {total.equivalent:>11} "
        f"{total.excluded:>9} {total.rate:>7.1f}"
    )
    print(
        f"mutation survival rate {total.rate:.1f}% (limit {settings.max_survival_rate}%), "
        f"{seconds / 60:.1f} min on {cores} workers; equivalents: {settings.equivalents_file.relative_to(ROOT)}"
    )
    if broken:
        print(f"{len(broken)} mutants could not be tested (see ERROR above)", file=sys.stderr)
        return 2
    return 1 if total.rate > settings.max_survival_rate else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
