# The one setup command and the one test command (CI runs `make check`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup check lint test bench

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test:
	$(BIN)/pytest -q

check: lint test

bench:
	$(BIN)/python bench/ingest.py
