# `make demo` and `make test` work on a fresh machine: they create .venv/ and install shipml
# with the exact versions pinned in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.shipml-installed
DEMO_DIR ?= shipml-quickstart

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv/ and install shipml with pinned dependencies

demo: install  ## the whole loop on the bundled demo data
	$(BIN)/shipml quickstart --dir $(DEMO_DIR)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint  ## lint, type-check and run every test
	$(BIN)/pytest

test-fast: install  ## the tests that train no models end to end
	$(BIN)/pytest -m "not slow and not integration"

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: install  ## shipml vs the cheat-sheet recipe, side by side
	$(BIN)/python benchmarks/train_quality.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
