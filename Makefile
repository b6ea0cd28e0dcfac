# The two commands: `make demo` runs the pipeline on the embedded default model,
# `make test` runs lint, types and the test suite. Each builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export ONTHEJOB_HOME := $(CURDIR)/.cache
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/onthejob pretrain
	$(BIN)/onthejob eval
	$(BIN)/onthejob train --env arith --steps 300 --out $(ONTHEJOB_HOME)/models/ground   # GRPO on arith: 0.86-0.90 -> 0.96-1.00 held-out
	$(BIN)/onthejob weeks --org 1 --weeks 1 --exam --model $(ONTHEJOB_HOME)/models/ground   # the ground model goes to work

test: $(STAMP)
	$(BIN)/ruff check onthejob tests benchmarks
	$(BIN)/ruff format --check onthejob tests benchmarks
	$(BIN)/mypy onthejob
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check --fix onthejob tests benchmarks
	$(BIN)/ruff format onthejob tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[benchmark]'
	$(BIN)/python benchmarks/sampling_vs_hf.py

clean:
	rm -rf $(VENV) .cache runs
