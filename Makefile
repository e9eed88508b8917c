# `make run` and `make test` are the two commands README.md opens with; .ci/run calls `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA_DIR ?= $(abspath ../shared/data/ohlcv)

.PHONY: setup run down test lint format bench clean browser compose

# torch==2.13.0 first: it is the CPU build on this disk; anything else would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The local single-node mode, paper trading, on the stored candles (offline-safe); online, drop
# --data-dir to trade Upbit's live candles. `make down` stops it with the ledger intact.
run: setup
	$(PY) -m cluster up --paper --data-dir $(DATA_DIR)

down: setup
	$(PY) -m cluster down

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The status-page test drives a real headless browser: Debian's chromium (~81 MB), installed once.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } || \
	  { sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends chromium; }

# tests/cluster/test_compose.py renders docker-compose.yml with Debian's docker-compose (1.29); it
# needs no Docker daemon.
compose:
	@command -v docker-compose >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose; } || \
	  { sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends docker-compose; }

test: lint browser compose
	$(VENV)/bin/pytest

# Three of the four benches; `python -m bench.backtest` (it first fits four smoke bundles) runs alone.
bench: setup
	$(PY) -m bench.features --data-dir $(DATA_DIR)
	$(PY) -m bench.train --data-dir $(DATA_DIR)
	$(PY) -m bench.serve --data-dir $(DATA_DIR)
	$(PY) -m bench.research --data-dir $(DATA_DIR)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
