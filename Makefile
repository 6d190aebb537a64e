# hbm-service: `make run` starts the service, `make test` runs every test.
PYTHON ?= $(shell command -v python3.12 2>/dev/null || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run api worker test test-unit test-e2e lint format bench compose-check clean browser

$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e './client[pandas,progress]'
	touch $(STAMP)

install: $(STAMP)  ## create the virtual environment

run: $(STAMP)  ## API (on 127.0.0.1 unless HOST is set) + workers, restarted if they crash; embedded Redis unless REDIS_URL
	$(BIN)/python -m service.launcher

api: $(STAMP)  ## the API alone (needs REDIS_URL)
	$(BIN)/python -m service

worker: $(STAMP)  ## one worker for fits and predictions (needs REDIS_URL)
	$(BIN)/python -m worker all

test: $(STAMP)  ## every test: unit, then end to end against real Redis and workers
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e

browser:  ## Debian's chromium and its driver, for the report page's browser tests (skipped without)
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	else echo "no /usr/bin/chromium and no apt-get: the browser tests will be skipped"; fi

LINTED := $(wildcard service worker tests bench examples client)

lint: $(STAMP)  ## ruff and mypy, as CI runs them
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	cd client && ../$(BIN)/mypy  # the client package: its own config (client/pyproject.toml)

format: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

bench: $(STAMP)  ## benchmarks side by side with peers; results under bench/results/
	$(BIN)/python -m bench

compose-check:  ## parse the compose file (no Docker engine needed)
	docker compose config --quiet

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
