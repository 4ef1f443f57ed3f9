# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Each creates .venv if it is missing and installs what it needs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, pinned: this CPU build lies on the machines' disk; an open range would pull a
# CUDA build of several GB.
TORCH := torch==2.13.0

.PHONY: demo test test-fast lint typecheck bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snapset demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

# Keras 3 picks its backend once per process, so the Keras tests run once per backend.
KERAS_BACKENDS := tensorflow torch jax
KERAS_PATHS := src/snapset/keras tests/keras

test: lint typecheck
	$(BIN)/python -m pytest --doctest-modules src tests $(KERAS_PATHS:%=--ignore=%)
	for backend in $(KERAS_BACKENDS); do \
		KERAS_BACKEND=$$backend $(BIN)/python -m pytest --doctest-modules $(KERAS_PATHS) || exit 1; \
	done

# The unit tests alone, without the slow training runs.
test-fast: $(STAMP)
	$(BIN)/python -m pytest --doctest-modules -m "not slow" src tests $(KERAS_PATHS:%=--ignore=%)
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest --doctest-modules -m "not slow" $(KERAS_PATHS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/gf2.py
	$(BIN)/python benchmarks/gf2_recovery.py
	$(BIN)/python benchmarks/bop.py
	$(BIN)/python benchmarks/bop_momentum.py
	$(BIN)/python benchmarks/compile_step.py
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
