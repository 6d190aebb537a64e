# hbm-service: `make run` starts the service, `make test` runs every test.
PYTHON ?= $(shell command -v python3.12 2>/dev/null || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run api worker test test-unit test-e2e lint format bench compose-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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

LINTED := $(wildcard service worker tests bench examples)

lint: $(STAMP)  ## ruff and mypy, as CI runs them
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

bench: $(STAMP)  ## benchmarks side by side with peers; results under bench/results/
	$(BIN)/python -m bench

compose-check:  ## parse the compose file (no Docker engine needed)
	docker compose config --quiet

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
