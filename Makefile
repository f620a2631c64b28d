# The two commands: `make run` (the default pipeline) and `make test` (tests and linters).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: run test lint install system-deps

run: $(STAMP)
	$(BIN)/snakemake --cores all

test: $(STAMP) system-deps lint
	$(BIN)/pytest -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Debian packages the tests use (headless Chromium, a single-node Slurm); skipped when present.
system-deps:
	bash tests/install_system_deps.sh
