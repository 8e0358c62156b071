# Two commands for a fresh clone (README): `make demo` sets up and runs the demo, `make test` runs the tests.
# Everything lands in .venv/ and ~/.cache/bimamba-edge/ (the runtime build, keyed by content hash).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SETUP  := $(VENV)/.bimamba-setup

.PHONY: setup runtime demo test

$(SETUP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(SETUP)

setup: $(SETUP)

runtime: setup
	$(VENV)/bin/bimamba-build

demo: runtime
	$(PY) -m bimamba_edge.demo

test: runtime
	$(PY) -m pytest
