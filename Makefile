# The two commands: `make run` (the default pipeline) and `make test` (tests and linters, what CI runs).
# `make check`: the edit-test loop (linters and every test that needs no Slurm, no browser and no whole
# workflow run; 90 s at most).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3
# pytest-xdist workers: the fast tier keeps both cores busy; the whole suite runs the Slurm tests (which
# mostly wait on the scheduler) on a worker of their own beside two busy ones.
CHECK_WORKERS ?= 2
TEST_WORKERS ?= 3

# Where PYTHONDONTWRITEBYTECODE is set (this machine's and CI's environment set it), no process writes
# the bytecode of what it imports, and each of the tests' hundreds of Python processes compiles the
# checkout's modules again from source; the processes make starts write it (__pycache__, git-ignored).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test check lint install system-deps

run: $(STAMP)
	$(BIN)/snakemake --cores all

# --durations: the slowest tests in CI's log, to keep the suite's time in view. pytest-xdist hands each
# worker whole files (one Slurm cluster; module fixtures built once) in the order tests/conftest.py sets.
XDIST = --dist loadfile --no-loadscope-reorder
test: $(STAMP) system-deps lint
	$(BIN)/pytest -ra --durations=15 -n $(TEST_WORKERS) $(XDIST)

# The fast tier has no Slurm cluster to keep on one worker: tests are shared out one by one and an idle
# worker takes queued ones from the other (a file's module fixtures are built at most once per worker).
check: $(STAMP) lint
	$(BIN)/pytest -q -m "not slow and not slurm and not browser" -n $(CHECK_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

install: $(STAMP)

# The venv's bytecode is written once, here, on both cores (pip's own compile uses one; a fresh venv
# without it compiles torch, pandas and Snakemake in every process where PYTHONDONTWRITEBYTECODE is
# set). -x: a torch file written for Python 3.12. -qq: pip's warnings about this machine's index list.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq --no-compile -e '.[test]'
	$(PY) -m compileall -q -j 0 -x py312_intrinsics $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
	touch $@

# Debian packages the tests use (headless Chromium, a single-node Slurm); skipped when present.
system-deps:
	bash tests/install_system_deps.sh
