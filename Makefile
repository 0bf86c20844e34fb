# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-retrain setup system-deps doctor bench clean

demo: setup
	$(VENV)/bin/circuits demo --overwrite

test: setup
	$(PY) -m pytest -q -m "not retrain" $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not retrain" $(PYTEST_ARGS)

test-retrain: setup
	$(PY) -m pytest -q -m retrain $(PYTEST_ARGS)

doctor: setup
	$(VENV)/bin/circuits doctor

setup: system-deps $(STAMP)

system-deps:
	@bash scripts/system_deps.sh

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

bench: setup
	$(PY) benchmarks/capture_overhead.py
	$(PY) benchmarks/attribution_graph.py
	$(PY) benchmarks/sae_train.py
	$(PY) benchmarks/features.py

clean:
	rm -rf out .pytest_cache
