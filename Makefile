# Every workflow is a target; targets that need the environment depend on the stamp file, so a
# fresh clone sets itself up. Runtime targets only call the CLI (ml-playground).
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
STAMP := .venv/.setup-stamp

EXP ?=
CONFIG ?=
PORT ?=
NPROC ?= 1
LOGDIR ?=
CORPUS ?=
CFG_ARG := $(if $(CONFIG),--exp-config $(CONFIG),)
PYTEST := $(RUN) pytest

.PHONY: help setup verify format lint pyright mypy quality quality-ext test unit unit-cov \
	integration e2e acceptance test-cuda prepare train sample loop export tensorboard lit bench gguf-help clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --all-groups --locked --python $(PYTHON)
	@touch $@

setup: $(STAMP) ## install uv if missing, create .venv, sync all dependency groups

verify: $(STAMP) ## print versions and usable devices
	$(CLI) verify

format: $(STAMP) ## ruff lint (with fixes) and format
	$(RUN) ruff check --fix ml_playground tests tools
	$(RUN) ruff format ml_playground tests tools

lint: $(STAMP) ## ruff lint and format check (no changes)
	$(RUN) ruff check ml_playground tests tools
	$(RUN) ruff format --check ml_playground tests tools

pyright: $(STAMP) ## pyright strict
	$(RUN) pyright

mypy: $(STAMP) ## mypy --strict
	$(RUN) mypy

quality: lint mypy pyright test ## ruff, format check, mypy, pyright, pytest

quality-ext: $(STAMP) ## mutation testing with cosmic-ray (non-fatal)
	-@$(RUN) python tools/mutation.py

test: $(STAMP) ## all tests
	$(PYTEST)

unit: $(STAMP) ## unit tests
	$(PYTEST) -m unit

# Unit tests alone cover ~70% (the integration layer covers distributed, export and TensorBoard code):
# the floor catches a large drop without failing on small refactors.
unit-cov: $(STAMP) ## unit tests with coverage report (fails below 68%)
	$(PYTEST) -m unit --cov=ml_playground --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=68

integration: $(STAMP) ## integration tests
	$(PYTEST) -m integration

e2e: $(STAMP) ## CLI end-to-end tests
	$(PYTEST) -m e2e

acceptance: $(STAMP) ## acceptance tests
	$(PYTEST) -m acceptance

test-cuda: $(STAMP) ## CUDA tests (tests/cuda; they skip where CUDA is absent)
	$(PYTEST) -m cuda

define need_exp
	@if [ -z "$(EXP)" ]; then echo "error: EXP is required, e.g. make $@ EXP=shakespeare; experiments: $$($(RUN) python -c 'from ml_playground import registry; print(", ".join(registry.names()))')" >&2; exit 2; fi
endef

prepare: $(STAMP) ## tokenize a corpus: make prepare EXP=shakespeare
	$(need_exp)
	$(CLI) prepare $(EXP) $(CFG_ARG)

train: $(STAMP) ## train: make train EXP=.. [CONFIG=..] [NPROC=N for DDP]
	$(need_exp)
	@if [ "$(NPROC)" = "1" ]; then $(CLI) train $(EXP) $(CFG_ARG); \
	else $(RUN) torchrun --standalone --nproc_per_node=$(NPROC) -m ml_playground.cli train $(EXP) $(CFG_ARG); fi

sample: $(STAMP) ## sample from the best checkpoint: make sample EXP=.. [CONFIG=..]
	$(need_exp)
	$(CLI) sample $(EXP) $(CFG_ARG)

loop: $(STAMP) ## prepare, train, sample (default EXP=shakespeare)
	$(CLI) loop $(or $(EXP),shakespeare) $(if $(CONFIG),--exp-config $(CONFIG),$(if $(EXP),,--exp-config ml_playground/configs/shakespeare_cpu.toml))

export: $(STAMP) ## export HF / GGUF / Ollama: make export EXP=.. [CONFIG=..]
	$(need_exp)
	$(CLI) export $(EXP) $(CFG_ARG)

tensorboard: $(STAMP) ## serve TensorBoard on 127.0.0.1: make tensorboard LOGDIR=out/<run>/logs/tb, or LOGDIR=out for every run under out/ [PORT=6006]
	@if [ -z "$(LOGDIR)" ]; then echo "error: LOGDIR is required, e.g. make tensorboard LOGDIR=out/shakespeare/logs/tb (one run) or LOGDIR=out (every run under out/)" >&2; exit 2; fi
	$(CLI) tensorboard --logdir $(LOGDIR) $(if $(PORT),--port $(PORT),)

lit: $(STAMP) ## explore a trained model in LIT: make lit EXP=.. [CONFIG=..] [PORT=5432]
	$(need_exp)
	$(CLI) lit $(EXP) $(CFG_ARG) $(if $(PORT),--port $(PORT),)

bench: $(STAMP) ## CPU benchmarks, JSON to out/bench/: make bench [CORPUS=path/to/input.txt]
	$(RUN) python -m ml_playground.bench $(if $(CORPUS),--corpus $(CORPUS),)

gguf-help: $(STAMP) ## run the vendored llama.cpp converter with --help (or say it is missing)
	$(RUN) python tools/llama_cpp/check_converter.py

clean: ## remove out/ (runs, benchmarks); keeps datasets and .venv
	rm -rf out
