# One entry point for set-up, demo, tests, benchmarks and docs.
# Every target installs what it needs by itself: a bare machine needs only
# make, a C++ compiler and a Python >= 3.12 (found by scripts/find_python.sh).

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CMDSTAN_HOME ?= $(HOME)/.cmdstan
export CMDSTAN_HOME
CMDSTAN_STAMP := $(CMDSTAN_HOME)/cmdstan-2.27.0/.build-ok
PYTEST_ARGS ?=

.PHONY: setup demo test test-quick bench docs examples lint cmdstan clean

setup: $(STAMP) $(CMDSTAN_STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	@PYBIN=$$(scripts/find_python.sh) && \
	  { [ -x $(PY) ] || "$$PYBIN" -m venv $(VENV); }
	@scripts/quiet_build.sh $(VENV)/install.log "Installing the pinned dependencies into $(VENV) (about 3 minutes)" \
	  bash -c '$(PY) -m pip install --upgrade pip && $(PY) -m pip install -c requirements-lock.txt -e ".[dev,stan,docs]"'
	@touch $(STAMP)

$(CMDSTAN_STAMP):
	@PYTHON=$(PY) bash scripts/install_cmdstan.sh

cmdstan: $(CMDSTAN_STAMP)

## The main job: a short warm-start demo on a built-in example model.
demo: setup
	$(PY) -m pymc_ext.demo

## What CI runs: every test (quick and slow; the examples in quick mode
## among them), then the documentation build with warnings as errors.
test: setup
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory docs

## The quick path only (slow tests deselected).
test-quick: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## The benchmarks also need the alternatives they compare against (pymc-extras, sbi,
## flowMC). pymc-extras 0.15 pins pymc<6.4, so they get an environment of their own,
## .venv-bench, with PyMC 6.3 (requirements-bench-lock.txt); the package supports both.
BENCH_VENV  := .venv-bench
BENCH_PY    := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml requirements-bench-lock.txt
	@PYBIN=$$(scripts/find_python.sh) && \
	  { [ -x $(BENCH_PY) ] || "$$PYBIN" -m venv $(BENCH_VENV); }
	@scripts/quiet_build.sh $(BENCH_VENV)/install.log "Installing the benchmark peers into $(BENCH_VENV)" \
	  bash -c '$(BENCH_PY) -m pip install --upgrade pip && $(BENCH_PY) -m pip install -c requirements-bench-lock.txt -e ".[dev,stan,bench]"'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) $(CMDSTAN_STAMP)
	$(BENCH_PY) benchmarks/run_all.py

## Run every example (full size) and keep its output and plots for the docs gallery.
examples: setup
	@mkdir -p docs/_static/examples
	@for f in examples/*.py; do n=$$(basename $$f .py); echo "== $$f"; \
	  MPLBACKEND=Agg TQDM_DISABLE=1 $(PY) $$f --out docs/_static/examples/$$n.png \
	    > docs/_static/examples/$$n.txt 2>&1 || { cat docs/_static/examples/$$n.txt; exit 1; }; done

docs: setup
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

lint: setup
	$(VENV)/bin/ruff check pymc_ext stan_bridge tests benchmarks examples

clean:
	rm -rf $(VENV) $(BENCH_VENV) docs/_build .pytest_cache
