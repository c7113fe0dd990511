# The one setup command and the one test command (CI runs `make check`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup check lint test web-check bench

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@# ThingsBoard's device SDK for the embedded broker's tests, apart: it overwrites paho-mqtt.
	$(BIN)/pip install -q --no-warn-conflicts --target .tbsdk "tb-mqtt-client==1.13.14" mmh3
	cd web && npm ci --no-audit --no-fund && npm run build
	@# The browser tests drive Debian's Chromium (never a downloaded one).
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

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
