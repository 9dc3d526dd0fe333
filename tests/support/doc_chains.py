"""The command sequences written in the project's docs, as steps a test runs on the shipped configs.

A doc's ```bash blocks, in order, are its sequence. Each command is either run — the CLI command
its Make target runs (asked of the Makefile itself, with `CLI=echo`), on the shipped config
rewritten into a scratch project root — or skipped by a named rule that says why. The test fails
on a command no rule knows, so a new documented command is either run or given a reason.

The rewrite keeps the config's shape and changes only what a test must: relative paths that runs
write or read back (datasets, out_dir, exports, the LoRA base, a user-provided corpus) move into
the scratch root, each relative path to the same place, so the links between configs hold; and the
run lengths shrink (`ITERATIONS`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ml_playground import registry
from ml_playground.config import PROJECT_ROOT
from ml_playground.config_loader import load_experiment_config

# Where a user reads command sequences: the top-level README, docs/ and every package folder's Readme.
DOCS: tuple[Path, ...] = (
    PROJECT_ROOT / "README.md",
    *sorted((PROJECT_ROOT / "docs").glob("*.md")),
    *sorted((PROJECT_ROOT / "ml_playground").glob("**/Readme.md")),
)

# The Makefile's environment stamps (runtime, eval and dev install sets).
MAKE_STAMPS: tuple[str, ...] = (".venv/.runtime-stamp", ".venv/.eval-stamp", ".venv/.dev-stamp")

# The CLI commands that take an experiment and a config (`ml_playground/cli.py`).
EXPERIMENT_COMMANDS = frozenset({"prepare", "train", "sample", "loop", "export", "eval"})

Table = dict[str, Any]
Key = tuple[str, ...]

# Shorter runs of the same model. Each value is an upper bound: a shipped value already below it
# stays. Consistent with the schedule: warmup < lr_decay_iters = max_iters, and evals at 0 and
# max_iters (a best checkpoint, and for LoRA a merged model, exist after every run).
ITERATIONS: dict[Key, int] = {
    ("train", "runtime", "max_iters"): 2,
    ("train", "runtime", "eval_interval"): 2,
    ("train", "runtime", "eval_iters"): 1,
    ("train", "schedule", "warmup_iters"): 1,
    ("train", "schedule", "lr_decay_iters"): 2,
}

# Paths a command writes (and a later command reads).
OUTPUT_PATHS: tuple[Key, ...] = (
    ("prepare", "dataset_dir"),
    ("train", "data", "dataset_dir"),
    ("train", "runtime", "out_dir"),
    ("sample", "runtime", "out_dir"),
    ("export", "ollama", "export_dir"),
    ("eval", "out_dir"),
)
SOURCE: Key = ("prepare", "source")
FALLBACK_SOURCE: Key = ("prepare", "fallback_source")
INPUTS: frozenset[Key] = frozenset({SOURCE, FALLBACK_SOURCE})
# Pretrained models a run starts from: init_from of training (the LoRA base too) and of sampling.
BASE_MODELS: tuple[Key, ...] = (
    ("train", "model", "init_from"),
    ("sample", "runtime", "init_from"),
)

# Kept where it is: an input from the repository (llama.cpp's converter), read, never written.
REPOSITORY_INPUTS: frozenset[Key] = frozenset({("export", "ollama", "convert_bin")})


@dataclass(frozen=True, slots=True, kw_only=True)
class DocCommand:
    """One command of a ```bash block: where it is written and its words (comments dropped)."""

    doc: Path
    line: int
    text: str
    argv: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(PROJECT_ROOT)}:{self.line}: `{self.text}`"


@dataclass(frozen=True, slots=True, kw_only=True)
class Skip:
    rule: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """A documented command the test runs: through make (`make_args`) or the CLI (`cli_args`)."""

    make_args: tuple[str, ...] | None = None
    cli_args: tuple[str, ...] | None = None


def bash_blocks(doc: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line inside the doc's ```bash fences, continuations joined."""
    inside = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if not inside:
            continue
        start, text = pending if pending is not None else (number, "")
        if line.rstrip().endswith("\\"):
            pending = (start, text + line.rstrip()[:-1] + " ")
            continue
        pending = None
        yield start, text + line


def _words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def documented_commands(doc: Path) -> list[DocCommand]:
    commands: list[DocCommand] = []
    for number, text in bash_blocks(doc):
        argv = _words(text)
        if argv:
            commands.append(
                DocCommand(doc=doc, line=number, text=" ".join(text.split("#")[0].split()), argv=tuple(argv))
            )
    return commands


def bash_text(doc: Path) -> str:
    return "\n".join(text for _, text in bash_blocks(doc))


def _strip_uv(argv: tuple[str, ...]) -> tuple[str, ...]:
    return argv[3:] if argv[:3] == ("uv", "run", "--no-sync") else argv


def _make_target(argv: tuple[str, ...]) -> str | None:
    if argv[:1] != ("make",):
        return None
    targets = [word for word in argv[1:] if "=" not in word]
    return targets[0] if targets else "help"


def _python_module(argv: tuple[str, ...]) -> str | None:
    words = _strip_uv(argv)
    if words[:2] == ("python", "-m") and len(words) > 2:
        return words[2]
    return None


def config_named(argv: tuple[str, ...]) -> Path | None:
    """The config a documented command names (`CONFIG=...` for make, `--exp-config ...` for the CLI)."""
    for i, word in enumerate(argv):
        if word.startswith("CONFIG="):
            return PROJECT_ROOT / word.removeprefix("CONFIG=")
        if word == "--exp-config" and i + 1 < len(argv):
            return PROJECT_ROOT / argv[i + 1]
    return None


# A Hugging Face model id (not a local path): a run that starts from one downloads it.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def needs_network(argv: tuple[str, ...]) -> bool:
    """Whether the command's config starts from a Hugging Face model id (init_from or a LoRA base)."""
    config = config_named(argv)
    if config is None or not config.is_file():
        return False
    table = read_toml(config)
    for key in BASE_MODELS:
        value = _get(table, key)
        if isinstance(value, str) and value not in ("scratch", "resume") and _HUB_ID.fullmatch(value):
            return not (PROJECT_ROOT / value).exists()
    return False


NETWORK_RULE = "network"

# (rule, matches, reason): a documented command these match is not run, for the reason given.
SKIP_RULES: tuple[tuple[str, Callable[[tuple[str, ...]], bool], str], ...] = (
    (
        "make test",
        lambda argv: _make_target(argv) == "test",
        "the test suite itself: run from inside a test it would recurse",
    ),
    (
        "make lit",
        lambda argv: _make_target(argv) == "lit",
        "serves LIT until stopped; tests/e2e/test_cli_lit.py and tests/integration/test_lit_server.py cover it",
    ),
    (
        "make tensorboard",
        lambda argv: _make_target(argv) == "tensorboard",
        "serves TensorBoard until stopped; tests/e2e/test_cli_tensorboard.py serves a parent of two runs, and "
        "tests/integration/test_tensorboard_runs.py finds two trained runs under one parent as two runs",
    ),
    (
        "benchmark",
        lambda argv: _make_target(argv) == "bench" or _python_module(argv) == "ml_playground.bench",
        "minutes of timed runs and a 1 GB preparation, some on placeholder paths (a nanoGPT checkout); "
        "tests/integration/test_bench.py runs every case, the shipped bundestag_char_cpu.toml included, with --tiny; "
        "tests/unit/bench/test_bench_chart.py runs --render on a saved report",
    ),
    (
        NETWORK_RULE,
        needs_network,
        "downloads a model from the Hugging Face hub, and tests never reach the network; the same path on local "
        "directories is run here (shakespeare_comedies_cpu.toml) and in tests/integration/test_init_from.py, the "
        "hub's one-line errors in tests/unit/interop/test_source.py",
    ),
    (
        "ollama",
        lambda argv: argv[:1] == ("ollama",),
        "needs the ollama binary and server; the export step before it writes the Modelfile it reads",
    ),
    (
        "multi-node torchrun",
        lambda argv: _strip_uv(argv)[:1] == ("torchrun",) and any(w.startswith("--nnodes") for w in argv),
        "needs several hosts (HOST0 names the rendezvous host); tests/integration/test_ddp_torchrun.py runs "
        "the same train command under torchrun on one host",
    ),
)


def _cli_words(argv: tuple[str, ...]) -> tuple[str, ...] | None:
    """The arguments after the CLI program for `ml-playground ...` / `python -m ml_playground.cli ...`."""
    words = _strip_uv(argv)
    if words[:1] == ("ml-playground",):
        return words[1:]
    if _python_module(argv) == "ml_playground.cli":
        return words[3:]
    return None


def classify(command: DocCommand) -> Skip | Run | None:
    """How the test treats a documented command; None when no rule knows it."""
    for rule, matches, reason in SKIP_RULES:
        if matches(command.argv):
            return Skip(rule=rule, reason=reason)
    target = _make_target(command.argv)
    if target in EXPERIMENT_COMMANDS:
        return Run(make_args=command.argv[1:])
    cli = _cli_words(command.argv)
    if cli is not None and cli[:1] and cli[0] in EXPERIMENT_COMMANDS:
        return Run(cli_args=cli)
    return None


@functools.cache  # one make call per documented line and process: several tests ask about each
def cli_arguments(run: Run) -> tuple[str, ...]:
    """The CLI's arguments for a documented step: for a make line, what the Makefile passes."""
    if run.cli_args is not None:
        return run.cli_args
    assert run.make_args is not None
    # CLI=echo / RUN=echo print the command line instead of running it; -o keeps make from
    # (re)creating the environment stamps.
    old_stamps = [word for stamp in MAKE_STAMPS for word in ("-o", stamp)]
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", *old_stamps, *run.make_args, "CLI=echo", "RUN=echo"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    words = tuple(_words(result.stdout))
    if result.returncode != 0 or not words or words[0] not in EXPERIMENT_COMMANDS:
        raise AssertionError(f"make {' '.join(run.make_args)}: no CLI command ({result.stdout!r}, {result.stderr!r})")
    return words


@dataclass(frozen=True, slots=True, kw_only=True)
class CliStep:
    """A CLI command on a shipped config (`config`, as the command line names it or the default)."""

    command: str
    experiment: str
    config: Path
    extra: tuple[str, ...]


def cli_step(args: tuple[str, ...]) -> CliStep:
    command, experiment, *rest = args
    config = registry.get(experiment).default_config
    extra: list[str] = []
    words = iter(rest)
    for word in words:
        if word == "--exp-config":
            config = PROJECT_ROOT / next(words)
        else:
            extra.append(word)
    return CliStep(command=command, experiment=experiment, config=config, extra=tuple(extra))


def _get(table: Table, key: Key) -> Any:
    value: Any = table
    for part in key:
        if not isinstance(value, dict) or part not in value:
            return None
        value = cast(Table, value)[part]
    return value


def _set(table: Table, key: Key, value: Any) -> None:
    for part in key[:-1]:
        table = cast(Table, table.setdefault(part, {}))
    table[key[-1]] = value


def _is_local_file(source: str) -> bool:
    return source != "bundled" and "://" not in source


def moved_keys(shipped: Table) -> list[Key]:
    """The path keys of `shipped` that move into the scratch root (relative ones only)."""
    keys = [key for key in OUTPUT_PATHS if isinstance(_get(shipped, key), str)]
    source = _get(shipped, SOURCE)
    if isinstance(source, str) and _is_local_file(source):
        keys.append(SOURCE)  # the user-provided corpus: the test puts one at the moved path
        if isinstance(_get(shipped, FALLBACK_SOURCE), str):
            keys.append(FALLBACK_SOURCE)  # where the corpus is read from when SOURCE is absent
    # A relative base model is a local path the project resolves against its root (a hub name
    # otherwise); under the folder runs write to (out/), it is what an earlier step wrote.
    written = {Path(cast(str, _get(shipped, key))).parts[0] for key in keys if key not in INPUTS}
    for key in BASE_MODELS:
        base = _get(shipped, key)
        if isinstance(base, str) and Path(base).parts[:1] and Path(base).parts[0] in written:
            keys.append(key)
    return [key for key in keys if not Path(cast(str, _get(shipped, key))).is_absolute()]


def rewrite(shipped: Table, scratch_root: Path) -> Table:
    """The shipped config with its relative paths under `scratch_root` and shorter runs."""
    table = cast(Table, json.loads(json.dumps(shipped)))  # a deep copy of plain TOML data
    for key in moved_keys(shipped):
        _set(table, key, str(scratch_root / cast(str, _get(shipped, key))))
    if "train" in table:
        for key, bound in ITERATIONS.items():
            current = _get(shipped, key)
            _set(table, key, bound if current is None else min(cast(int, current), bound))
    return table


def changed_keys(shipped: Table, rewritten: Table) -> set[Key]:
    def flat(table: Table, prefix: Key = ()) -> dict[Key, Any]:
        out: dict[Key, Any] = {}
        for name, value in table.items():
            if isinstance(value, dict):
                out |= flat(cast(Table, value), (*prefix, name))
            else:
                out[(*prefix, name)] = value
        return out

    before, after = flat(shipped), flat(rewritten)
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in cast(list[object], value)) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def dump_toml(table: Table) -> str:
    lines: list[str] = []

    def emit(prefix: str, body: Table) -> None:
        scalars = {name: value for name, value in body.items() if not isinstance(value, dict)}
        if prefix and (scalars or not body):
            lines.append(f"[{prefix}]")
        lines.extend(f"{name} = {_toml_value(value)}" for name, value in scalars.items())
        for name, value in body.items():
            if isinstance(value, dict):
                emit(f"{prefix}.{name}" if prefix else name, cast(Table, value))

    emit("", table)
    return "\n".join(lines) + "\n"


def read_toml(path: Path) -> Table:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def resolved_paths(cfg: object, prefix: Key = ()) -> Iterator[tuple[Key, Path]]:
    """Every Path the loaded config resolved, with its dotted key (inputs from the repo left out)."""
    for name in getattr(type(cfg), "__dataclass_fields__", {}):
        value: object = getattr(cfg, name)
        key = (*prefix, name)
        if isinstance(value, Path) and key not in REPOSITORY_INPUTS:
            yield key, value
        elif hasattr(type(value), "__dataclass_fields__"):
            yield from resolved_paths(value, key)


# Paths under out/ that a doc's commands or comments name: each exists once its sequence has run.
_OUT_PATH = re.compile(r"(?<![\w/<])out/[\w./-]*[\w/]")


# `make bench` writes here; the sequences skip the benchmark (its tests run every case).
BENCH_OUT = "out/bench"


def named_outputs(doc: Path) -> list[str]:
    """The out/ paths the doc's bash blocks name, the benchmark's reports aside."""
    paths = {match.group(0).rstrip("/") for match in _OUT_PATH.finditer(bash_text(doc))} - {"out"}
    return sorted(path for path in paths if not (path == BENCH_OUT or path.startswith(f"{BENCH_OUT}/")))


# Where a config trains or samples; a command on a CUDA config runs only where CUDA is (tests/cuda).
DEVICES: tuple[Key, ...] = (("train", "runtime", "device"), ("sample", "runtime", "device"))


def needs_cuda(config: Path) -> bool:
    """Whether the config trains or samples on CUDA (a GPU config of ml_playground/configs)."""
    table = read_toml(config)
    return any(_get(table, key) == "cuda" for key in DEVICES)


# The text a user provides where a config's [prepare].source names a file (the bundestag corpora,
# the GPT-2 124M corpus): German, and it holds every character of the configs' sample prompts
# ("Sehr geehrte Damen und Herren", a newline), which a char-level vocabulary must contain.
USER_CORPUS = (
    "Sehr geehrte Damen und Herren, liebe Kolleginnen und Kollegen! Der Bundestag berät heute in "
    "erster Lesung den Entwurf eines Gesetzes zur Stärkung der Wettbewerbsfähigkeit. Wir haben über "
    "die Änderungsanträge der Fraktionen abgestimmt; die Beschlussempfehlung des Ausschusses ist "
    "angenommen. Ich erteile das Wort der Abgeordneten für die Fraktion.\n"
) * 60
# Characters per token of USER_CORPUS, at most (GPT-2 BPE on German: ~3; char-level: 1).
_CHARS_PER_TOKEN = 4


def user_corpus(block_size: int, val_fraction: float) -> str:
    """USER_CORPUS repeated until its val split holds two training windows (block_size + 1 tokens)."""
    needed_chars = 2 * (block_size + 1) * _CHARS_PER_TOKEN / val_fraction
    return USER_CORPUS * max(1, math.ceil(needed_chars / len(USER_CORPUS)))


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def plan(doc: Path) -> list[tuple[DocCommand, Skip | Run]]:
    """Each documented command with how it is treated; a command no rule knows fails here."""
    steps: list[tuple[DocCommand, Skip | Run]] = []
    for command in documented_commands(doc):
        action = classify(command)
        assert action is not None, f"{command.where}: no rule runs or skips this documented command; add one"
        steps.append((command, action))
    return steps


def prepare_config(step: CliStep, configs: Path, scratch: Path) -> Path:
    """The rewritten config of `step` (written once per shipped file), checked to differ from the
    shipped one only in moved paths and run lengths, and to resolve every path into `scratch`."""
    target = configs / step.config.relative_to(PROJECT_ROOT)
    if target.exists():
        return target
    shipped = read_toml(step.config)
    rewritten = rewrite(shipped, scratch)
    allowed = set(ITERATIONS) | set(moved_keys(shipped))
    assert changed_keys(shipped, rewritten) <= allowed, _rel(step.config)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dump_toml(rewritten), encoding="utf-8")
    assert read_toml(target) == rewritten
    loaded = load_experiment_config(target)
    outside = [key for key, path in resolved_paths(loaded) if not path.is_relative_to(scratch)]
    assert outside == [], f"{_rel(step.config)}: paths left in the repository: {outside}"
    if SOURCE in moved_keys(shipped):  # the corpus the doc asks the user to provide
        # Where the docs ask for it: a config with a fallback reads a corpus another experiment
        # reads (bundestag_tiktoken reads bundestag_char's), so the test puts it only there.
        prepare = rewritten["prepare"]
        corpus = Path(prepare["fallback_source"] if "fallback_source" in prepare else prepare["source"])
        corpus.parent.mkdir(parents=True, exist_ok=True)
        if not corpus.exists() and loaded.prepare is not None and loaded.train is not None:
            text = user_corpus(loaded.train.data.block_size, loaded.prepare.val_fraction)
            corpus.write_text(text, encoding="utf-8")
    return target


@dataclass(frozen=True, slots=True, kw_only=True)
class SequenceRun:
    ran: list[str]  # the documented commands run, as written
    left_for_cuda: list[str]  # the documented commands on CUDA configs not run (no CUDA wanted)


# Where a rewritten config's dataset lives (prepared by `prepare` or `loop`, read by `train`).
DATASET_DIRS: tuple[Key, ...] = (("prepare", "dataset_dir"), ("train", "data", "dataset_dir"))


def dataset_dirs(config: Path, scratch: Path) -> set[Path]:
    """The dataset folders of a rewritten config, relative to the scratch root."""
    table = read_toml(config)
    paths = [Path(value) for key in DATASET_DIRS if isinstance(value := _get(table, key), str)]
    return {path.relative_to(scratch) for path in paths if path.is_relative_to(scratch)}


def _share_datasets(folders: set[Path], scratch: Path, prepared: Path) -> None:
    """Datasets an earlier sequence prepared are copied in; the ones this sequence prepared first are kept."""
    for folder in sorted(folders):
        kept, here = prepared / folder, scratch / folder
        if (kept / "meta.json").is_file():
            shutil.copytree(kept, here, dirs_exist_ok=True)
        elif (here / "meta.json").is_file():
            shutil.copytree(here, kept.with_name(f"{kept.name}.partial"))
            kept.with_name(f"{kept.name}.partial").rename(kept)


def run_sequence(doc: Path, tmp_path: Path, *, with_cuda: bool, prepared: Path | None = None) -> SequenceRun:
    """Run the doc's sequence as written (each step a CLI subprocess on its rewritten config).

    Without `with_cuda`, commands on CUDA configs are left out (tests/cuda runs them). With
    `prepared` (a folder shared by the sequences of a test session), a dataset that an earlier
    sequence prepared on the same relative path is copied in first, so the sequence's own
    `prepare` / `loop` finds it up to date (its stamp holds the corpus's sha256 and the settings)
    instead of encoding the same corpus again; a dataset this sequence prepared is kept there."""
    scratch = tmp_path / "root"
    configs = tmp_path / "configs"
    steps: list[tuple[DocCommand, list[str]]] = []
    left: list[str] = []
    datasets: set[Path] = set()
    for command, action in plan(doc):
        if isinstance(action, Skip):
            continue
        step = cli_step(cli_arguments(action))
        if needs_cuda(step.config) and not with_cuda:
            left.append(command.where)
            continue
        config = prepare_config(step, configs, scratch)
        datasets |= dataset_dirs(config, scratch)
        steps.append((command, [step.command, step.experiment, "--exp-config", str(config), *step.extra]))
    if prepared is not None:
        _share_datasets(datasets, scratch, prepared)

    # Offline, as the docs promise; one intra-op thread, since spinning thread pools make these
    # small models several times slower on a CPU the test suite shares.
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for command, args in steps:
        result = subprocess.run(
            [sys.executable, "-m", "ml_playground.cli", *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            check=False,
        )
        assert result.returncode == 0, f"{command.where} exited {result.returncode}:\n{result.stderr[-3000:]}"
    if prepared is not None:
        _share_datasets(datasets, scratch, prepared)
    return SequenceRun(ran=[command.where for command, _ in steps], left_for_cuda=left)


def missing_outputs(doc: Path, scratch: Path) -> list[str]:
    """The out/ paths the doc names that its sequence (run in `scratch`) did not write."""
    return [path for path in named_outputs(doc) if not (scratch / path).exists()]
