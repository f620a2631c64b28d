# The two commands: `make run` (the default pipeline) and `make test` (tests and linters, what CI runs).
# `make check`: the edit-test loop (linters and every test that needs no Slurm, no browser and no long
# workflow run; its pytest took 13.5 minutes on a 2-core AMD EPYC VM shared with other work, load ~9).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: run test check lint install system-deps

run: $(STAMP)
	$(BIN)/snakemake --cores all

# --durations: the slowest tests in CI's log, to keep the suite's time in view
test: $(STAMP) system-deps lint
	$(BIN)/pytest -ra --durations=15

check: $(STAMP) lint
	$(BIN)/pytest -q -m "not slow and not slurm and not browser"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

install: $(STAMP)

# --no-compile: Python compiles a module when it is first imported, so the install skips all of torch's
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[test]'
	touch $@

# Debian packages the tests use (headless Chromium, a single-node Slurm); skipped when present.
system-deps:
	bash tests/install_system_deps.sh
