# Every workflow is a target; targets that need the environment depend on a stamp file, so a
# fresh clone sets itself up. Two stamps, two install sets: runtime targets (prepare, train,
# sample, loop, ...) need only the package and its dependencies ($(RUNTIME)); `bench` adds the bench
# group ($(BENCH): matplotlib for its chart), `eval` the eval group ($(EVAL): lm-evaluation-harness
# and its datasets/metrics stack); quality and test targets add every group ($(DEV):
# linters, type checkers, pytest, llama-cpp-python, which builds from source). Runtime targets only
# call the CLI (ml-playground).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export UV_PYTHON_DOWNLOADS := never
# Precompile bytecode at install: the environment may set PYTHONDONTWRITEBYTECODE, and without
# .pyc files every new process (CLI runs, subprocess tests) recompiles torch._dynamo (~10-30 s).
export UV_COMPILE_BYTECODE := 1
RUN := $(UV) run --no-sync
CLI := $(RUN) ml-playground
RUNTIME := .venv/.runtime-stamp
DEV := .venv/.dev-stamp
BENCH := .venv/.bench-stamp
EVAL := .venv/.eval-stamp

EXP ?=
CONFIG ?=
PORT ?=
NPROC ?= 1
LOGDIR ?=
CORPUS ?=
# Values reach the shell as one word each, whatever they hold (spaces, quotes): 'x' with every '
# inside written as '\''.
quote = '$(subst ','\'',$(1))'
CFG_ARG = $(if $(CONFIG),--exp-config $(call quote,$(CONFIG)),)
PORT_ARG = $(if $(PORT),--port $(call quote,$(PORT)),)
EXP_ARG = $(call quote,$(EXP))
PYTEST := $(RUN) pytest
# The test targets spread the test files over one pytest-xdist worker per CPU core; a file stays
# on one worker, so its module-scoped runs are built once. TEST_WORKERS=0 runs them in this
# process (a debugger, `-x`); N picks N workers.
TEST_WORKERS ?= auto
PYTEST_PARALLEL := $(PYTEST) -n $(TEST_WORKERS) --dist loadfile

.PHONY: help setup verify format lint pyright mypy quality quality-ext test unit unit-cov \
	integration e2e acceptance test-cuda prepare train sample loop export eval tensorboard lit bench gguf-help clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-13s %s\n", $$1, $$2}'

define ensure_uv
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
endef

# --no-dev: the package and its dependencies only. --inexact: leave installed dev tools in place,
# so that a runtime target after a dependency change does not undo `make setup`.
$(RUNTIME): pyproject.toml uv.lock
	$(ensure_uv)
	$(UV) sync --no-dev --inexact --locked --python $(PYTHON)
	@touch $@

# The runtime set and the bench group (matplotlib), for `make bench` alone.
$(BENCH): pyproject.toml uv.lock
	$(ensure_uv)
	$(UV) sync --no-dev --group bench --inexact --locked --python $(PYTHON)
	@touch $@ $(RUNTIME)

# The runtime set and the eval group (lm-evaluation-harness), for `make eval` alone.
$(EVAL): pyproject.toml uv.lock
	$(ensure_uv)
	$(UV) sync --no-dev --group eval --inexact --locked --python $(PYTHON)
	@touch $@ $(RUNTIME)

# Every group; the runtime, bench and eval sets are part of it, so their stamps are current too.
$(DEV): pyproject.toml uv.lock
	$(ensure_uv)
	$(UV) sync --all-groups --locked --python $(PYTHON)
	@touch $@ $(RUNTIME) $(BENCH) $(EVAL)

setup: $(DEV) ## install uv if missing, create .venv, sync all dependency groups (runtime + dev)

verify: $(RUNTIME) ## print versions and usable devices
	$(CLI) verify

format: $(DEV) ## ruff lint (with fixes) and format
	$(RUN) ruff check --fix ml_playground tests tools
	$(RUN) ruff format ml_playground tests tools

lint: $(DEV) ## ruff lint and format check (no changes)
	$(RUN) ruff check ml_playground tests tools
	$(RUN) ruff format --check ml_playground tests tools

pyright: $(DEV) ## pyright strict
	$(RUN) pyright

mypy: $(DEV) ## mypy --strict
	$(RUN) mypy

quality: lint mypy pyright test ## ruff, format check, mypy, pyright, pytest

quality-ext: $(DEV) ## mutation testing with cosmic-ray; fails above the survival rate in pyproject.toml
	$(RUN) python tools/mutation.py

test: $(DEV) ## all tests
	$(PYTEST_PARALLEL)

unit: $(DEV) ## unit tests
	$(PYTEST_PARALLEL) -m unit

# Unit tests alone cover ~70% (the integration layer covers distributed, export and TensorBoard code):
# the floor catches a large drop without failing on small refactors.
unit-cov: $(DEV) ## unit tests with coverage report (fails below 68%)
	$(PYTEST_PARALLEL) -m unit --cov=ml_playground --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=68

integration: $(DEV) ## integration tests
	$(PYTEST_PARALLEL) -m integration

e2e: $(DEV) ## CLI end-to-end tests
	$(PYTEST_PARALLEL) -m e2e

acceptance: $(DEV) ## acceptance tests
	$(PYTEST_PARALLEL) -m acceptance

# ML_PLAYGROUND_REQUIRE_CUDA=1: without a usable GPU the layer fails instead of skipping (make test skips it).
test-cuda: $(DEV) ## CUDA tests (tests/cuda); they fail where CUDA is absent
	ML_PLAYGROUND_REQUIRE_CUDA=1 $(PYTEST) -m cuda

define need_exp
	@if [ -z $(EXP_ARG) ]; then echo "error: EXP is required, e.g. make $@ EXP=shakespeare; experiments: $$($(RUN) python -c 'from ml_playground import registry; print(", ".join(registry.names()))')" >&2; exit 2; fi
endef

prepare: $(RUNTIME) ## tokenize a corpus: make prepare EXP=shakespeare
	$(need_exp)
	$(CLI) prepare $(EXP_ARG) $(CFG_ARG)

train: $(RUNTIME) ## train: make train EXP=.. [CONFIG=..] [NPROC=N for DDP]
	$(need_exp)
	@if [ $(call quote,$(NPROC)) = "1" ]; then $(CLI) train $(EXP_ARG) $(CFG_ARG); \
	else $(RUN) torchrun --standalone --nproc_per_node=$(call quote,$(NPROC)) -m ml_playground.cli train $(EXP_ARG) $(CFG_ARG); fi

sample: $(RUNTIME) ## sample from the best checkpoint: make sample EXP=.. [CONFIG=..]
	$(need_exp)
	$(CLI) sample $(EXP_ARG) $(CFG_ARG)

# Without EXP: shakespeare_char's own config (character-level Shakespeare with rotary positions,
# QK-norm and Muon), the shortest way from a fresh clone to text that reads as Shakespeare on a CPU
# (val ~1.7 nats per character after about 40 s of training on an idle 2-core CPU).
LOOP_EXP := shakespeare_char

loop: $(RUNTIME) ## prepare, train, sample (default: shakespeare_char, under a minute on a CPU)
	$(CLI) loop $(call quote,$(or $(EXP),$(LOOP_EXP))) $(CFG_ARG)

export: $(RUNTIME) ## export HF / GGUF / Ollama: make export EXP=.. [CONFIG=..]
	$(need_exp)
	$(CLI) export $(EXP_ARG) $(CFG_ARG)

eval: $(EVAL) ## evaluate the best checkpoint with lm-evaluation-harness ([eval]): make eval EXP=.. [CONFIG=..]
	$(need_exp)
	$(CLI) eval $(EXP_ARG) $(CFG_ARG)

tensorboard: $(RUNTIME) ## serve TensorBoard on 127.0.0.1: make tensorboard LOGDIR=out/<run>/logs/tb, or LOGDIR=out for every run under out/ [PORT=6006]
	@if [ -z $(call quote,$(LOGDIR)) ]; then echo "error: LOGDIR is required, e.g. make tensorboard LOGDIR=out/shakespeare/logs/tb (one run) or LOGDIR=out (every run under out/)" >&2; exit 2; fi
	$(CLI) tensorboard --logdir $(call quote,$(LOGDIR)) $(PORT_ARG)

lit: $(RUNTIME) ## explore a trained model in LIT: make lit EXP=.. [CONFIG=..] [PORT=5432]
	$(need_exp)
	$(CLI) lit $(EXP_ARG) $(CFG_ARG) $(PORT_ARG)

bench: $(BENCH) ## CPU benchmarks, JSON to out/bench/: make bench [CORPUS=path/to/input.txt]
	$(RUN) python -m ml_playground.bench $(if $(CORPUS),--corpus $(call quote,$(CORPUS)),)

gguf-help: $(RUNTIME) ## run the vendored llama.cpp converter with --help (or say it is missing)
	$(RUN) python tools/llama_cpp/check_converter.py

clean: ## remove out/ (runs, benchmarks); keeps datasets and .venv
	rm -rf out
