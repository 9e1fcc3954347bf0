# The two commands of the quickstart. Each sets up .venv/ when missing and is idempotent:
# a second call installs nothing (the stamp is newer than pyproject.toml).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adfuse-installed
DEMO_STAMP := $(VENV)/.adfuse-demo-installed
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export MPLBACKEND := Agg
export CODECARBON_LOG_LEVEL := error
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export RAY_AIR_NEW_OUTPUT := 0

.PHONY: demo test lint format bench setup clean

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: the pinned CPU wheel; an unpinned resolve would pull a multi-GB CUDA build.
# Everything (tests, Ray, Optuna, linters) for `make test`; the demo needs only the models' extras
# and codecarbon, which saves about 25 s of a fresh clone's first `make demo`.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(PIP) torch==2.13.0
	$(PIP) -e '.[all,dev]'
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml Makefile | $(BIN)/python
	$(PIP) torch==2.13.0
	$(PIP) -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/adfuse demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_synth.py

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
