# boxd: every target creates the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv lint test test-all demo bench sim clean

help:
	@echo "make demo      run the Box emulator and upload a sample through it"
	@echo "make test      lint, then the test suite (slow scenarios excluded)"
	@echo "make test-all  the whole suite, slow scenarios included"
	@echo "make lint      ruff + mypy --strict"
	@echo "make bench     benchmarks; writes BENCHMARKS.md"
	@echo "make sim       run the emulator in the foreground on 127.0.0.1:8089"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check boxd tests
	$(BIN)/ruff format --check boxd tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -m "not slow"

test-all: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/boxd demo

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

sim: $(STAMP)
	$(BIN)/boxd sim --data-dir boxd-sim-data

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache boxd-sim-data
