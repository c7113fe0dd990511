# The one setup command and the one test command (CI runs `make check`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup check lint test web-check bench

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	cd web && npm ci --no-audit --no-fund && npm run build

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test:
	$(BIN)/pytest -q

# The dashboard: lint (ESLint + Prettier), types, unit tests, and the API types match the API.
web-check:
	cd web && npm run lint && npm run typecheck && npm run test -- --run && npm run api:check

check: lint web-check test

bench:
	$(BIN)/python bench/ingest.py
