# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Each creates .venv if it is missing and installs what it needs: the demo only what the demo
# needs, the tests the whole development set (every Keras backend, the docs, the runtimes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: this CPU build lies on the machines' disk; an open range would pull a
# CUDA build of several GB.
TORCH := torch==2.13.0
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-fast test-runtimes test-wheel lint typecheck docs docs-serve bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)

$(DEMO_STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $@

# The development set includes the demo's.
$(DEV_STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(DEMO_STAMP)

# The demo's Keras part runs on the torch backend, which the demo installs anyway.
demo: $(DEMO_STAMP)
	KERAS_BACKEND=$${KERAS_BACKEND:-torch} $(BIN)/snapset demo

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

# The documentation site, built strictly (a broken link or reference fails): build/site.
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

docs-serve: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# Keras 3 picks its backend once per process, so the Keras tests run once per backend.
KERAS_BACKENDS := tensorflow torch jax
KERAS_PATHS := src/snapset/keras tests/keras
# TensorFlow computes channels-first convolutions on the CPU only through oneDNN, which it
# switches on by itself on AVX-512 CPUs and not on AVX2-only ones.
KERAS_ENV := TF_ENABLE_ONEDNN_OPTS=1

# tests/runtimes needs llama.cpp, which `make test-runtimes` builds.
test: lint typecheck docs
	$(BIN)/python -m pytest --doctest-modules src tests $(KERAS_PATHS:%=--ignore=%) \
		--ignore=tests/runtimes
	for backend in $(KERAS_BACKENDS); do \
		$(KERAS_ENV) KERAS_BACKEND=$$backend $(BIN)/python -m pytest --doctest-modules \
			$(KERAS_PATHS) || exit 1; \
	done
	$(MAKE) test-wheel

# The unit tests alone, without the slow training runs.
test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest --doctest-modules -m "not slow" src tests $(KERAS_PATHS:%=--ignore=%) \
		--ignore=tests/runtimes
	$(KERAS_ENV) KERAS_BACKEND=tensorflow $(BIN)/python -m pytest --doctest-modules -m "not slow" \
		$(KERAS_PATHS)

# llama.cpp itself: llama-cpp-python built from source with this machine's compiler (about
# 35 minutes on two cores, once: it stays in .venv), then the checks that GGUF files load and
# compute what snapset computes.
LLAMA_CPP := llama-cpp-python==0.3.36
test-runtimes: $(DEV_STAMP)
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || \
		CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install "$(LLAMA_CPP)"
	$(BIN)/python -m pytest -s -m runtimes tests/runtimes

# The wheel as users get it: built, checked by twine, installed (not editable) into a fresh
# environment with the demo's extras, and run from outside the checkout.
WHEEL_VENV := build/wheel-venv
test-wheel: $(DEV_STAMP)
	rm -rf build/dist $(WHEEL_VENV)
	$(BIN)/python -m build --wheel --no-isolation --outdir build/dist
	$(BIN)/twine check --strict build/dist/*.whl
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(WHEEL_VENV)/bin/python -m pip install --quiet "$$(ls build/dist/*.whl)[demo]"
	cd /tmp && KERAS_BACKEND=torch $(CURDIR)/$(WHEEL_VENV)/bin/python \
		$(CURDIR)/tests/installed_wheel.py

bench: $(DEV_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/gf2.py
	$(BIN)/python benchmarks/gf2_recovery.py
	$(BIN)/python benchmarks/bop.py
	$(BIN)/python benchmarks/bop_momentum.py
	$(BIN)/python benchmarks/bop_defaults.py
	$(BIN)/python benchmarks/compile_step.py
	$(BIN)/python benchmarks/inference.py
	for backend in torch tensorflow jax; do \
		KERAS_BACKEND=$$backend $(BIN)/python benchmarks/keras_packed.py || exit 1; \
	done
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/plain_network.py
	$(BIN)/python benchmarks/oscillation.py
	$(BIN)/python benchmarks/scales.py
	$(BIN)/python benchmarks/binary_net.py
	$(BIN)/python benchmarks/ternary_lm.py
	$(BIN)/python benchmarks/lm_generation.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
