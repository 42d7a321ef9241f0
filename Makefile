# `make demo` and `make test` work on a fresh machine: they create .venv/ and install shipml
# with the exact versions pinned in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.shipml-installed
DEMO_DIR ?= shipml-quickstart

.PHONY: install demo prometheus test test-fast chaos lint format anchors bench serve-anchors bench-serve bench-drift clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	# torch first, the CPU build pinned: anything that needs torch then finds it installed.
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv/ and install shipml with pinned dependencies

demo: install  ## the whole loop on the bundled demo data
	$(BIN)/shipml quickstart --dir $(DEMO_DIR)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The serving tests scrape /metrics with a real Prometheus server, and the page tests (/docs,
# the report) render in headless Chromium: Debian's packages, installed here when missing and
# apt-get can (as root); otherwise those tests say how to get them.
prometheus:
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus \
	  >/dev/null; } || echo "note: no prometheus server (Debian: apt-get install -y prometheus)"
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: no headless chromium (Debian: apt-get install -y chromium)"

# Two workers keep both cores busy: OpenMP threads that do not spin at all share them best
# (benchmarks/omp_wait.py), so the tests set what a user on a loaded machine would.
test: lint prometheus  ## lint, type-check and run every test (two workers; tests sharing a fixture stay together)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -n 2 --dist loadgroup --durations=25

test-fast: install  ## the tests that train no models end to end
	$(BIN)/pytest -m "not slow and not integration"

# The attacks and faults of tests/chaos (also part of `make test`), on 127.0.0.1 only, each
# bounded; what was tried and what held ends the output as a table (docs/robustness.md).
chaos: install prometheus  ## only the chaos suite: load, kills, hostile input, tampering, full disk
	SHIPML_CHAOS_FIGURES=$(CURDIR)/.chaos/figures.jsonl OMP_WAIT_POLICY=PASSIVE \
	  $(BIN)/pytest -m chaos -n 2 --dist loadgroup

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

.bench/flaml/.installed: benchmarks/anchors/flaml-requirements.txt
	$(PYTHON) -m venv .bench/flaml
	.bench/flaml/bin/pip install --quiet -r benchmarks/anchors/flaml-requirements.txt
	touch $@

.bench/autogluon/.installed: benchmarks/anchors/autogluon-requirements.txt
	$(PYTHON) -m venv .bench/autogluon
	.bench/autogluon/bin/pip install --quiet torch==2.13.0
	.bench/autogluon/bin/pip install --quiet -r benchmarks/anchors/autogluon-requirements.txt
	touch $@

anchors: .bench/flaml/.installed .bench/autogluon/.installed  ## FLAML and AutoGluon, each in its own venv

bench: install anchors  ## shipml vs the cheat-sheet RF, FLAML and AutoGluon, side by side
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/train_quality.py

.bench/bentoml/.installed: benchmarks/anchors/serve/bentoml-requirements.txt
	PYTHON=$(PYTHON) benchmarks/anchors/serve/setup.sh bentoml

.bench/mlserver/.installed: benchmarks/anchors/serve/mlserver-requirements.txt
	PYTHON=$(PYTHON) benchmarks/anchors/serve/setup.sh mlserver

serve-anchors: .bench/bentoml/.installed .bench/mlserver/.installed  ## wrk, BentoML and MLServer, each in its own venv
	benchmarks/anchors/serve/setup.sh wrk

bench-serve: install serve-anchors  ## shipml serve vs the cheat-sheet app, MLflow, BentoML and MLServer
	$(BIN)/python benchmarks/serve_bench.py $(BENCH_SERVE_ARGS)

bench-drift: install  ## shipml.detect_drift vs Evidently's DataDriftPreset and a scipy pass (200k, 1M rows)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/drift_bench.py --repeats 3 --out benchmarks/DRIFT_RESULTS.md $(BENCH_DRIFT_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
