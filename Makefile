# Everything a fresh machine (python3 and nothing else) needs, from two commands:
#   make demo   the FastAPI example chat app recording into the local Freeplay server
#   make test   ruff, mypy --strict on the package, the test suite, and the built sdist/wheel
#               checked as PyPI will check them
# Tools come from pyproject's [dependency-groups] (PEP 735), installed with pip's `--group`
# (pip >= 25.1, which the venv gets first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
VENV_STAMP := $(VENV)/.venv
DEV_STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo
DEMO_OTEL_STAMP := $(VENV)/.installed-demo-otel
DIST_DIR ?= $(VENV)/dist

.PHONY: install test lint typecheck pytest dist-check demo demo-fastapi demo-flask demo-django bench bench-pytest reliability clean

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade 'pip>=25.1'
	touch $(VENV_STAMP)

# The package with every adapter's framework, plus the test, lint and packaging tools.
$(DEV_STAMP): pyproject.toml $(VENV_STAMP)
	$(PIP) install --quiet -e '.[all]' --group dev
	touch $(DEV_STAMP)

# The package and the demo's own dependencies only (no test toolchain).
$(DEMO_STAMP): pyproject.toml $(VENV_STAMP)
	$(PIP) install --quiet -e . --group demo
	touch $(DEMO_STAMP)

# The same, plus OpenTelemetry, OpenInference and the OpenAI SDK (make demo RECORDING=otel).
$(DEMO_OTEL_STAMP): pyproject.toml $(VENV_STAMP)
	$(PIP) install --quiet -e '.[opentelemetry]' --group demo-otel
	touch $(DEMO_OTEL_STAMP)

install: $(DEV_STAMP)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

pytest: $(DEV_STAMP)
	$(BIN)/pytest

# Build the sdist and the wheel, and check them as PyPI would (metadata, README rendering,
# wheel contents).
dist-check: $(DEV_STAMP)
	rm -rf $(DIST_DIR)
	$(BIN)/python -m build --quiet --outdir $(DIST_DIR) .
	$(BIN)/twine check --strict $(DIST_DIR)/*
	$(BIN)/check-wheel-contents $(DIST_DIR)/*.whl

test: lint typecheck pytest dist-check

# The example chat app (FastAPI, Flask or Django) and the local Freeplay page; Ctrl-C stops
# both. Pass options with DEMO_ARGS, e.g. make demo DEMO_ARGS="--port 8001 --db :memory:".
# With OPENAI_API_KEY or ANTHROPIC_API_KEY set, the provider's SDK is installed and used.
# RECORDING=otel: the model calls are recorded as OpenTelemetry spans (OpenInference on the
# OpenAI SDK), with no record() call; that installs the `demo-otel` group too.
DEMO_ARGS ?=
RECORDING ?= record

demo: demo-fastapi

demo-fastapi demo-flask demo-django: $(if $(filter otel,$(RECORDING)),$(DEMO_OTEL_STAMP),$(DEMO_STAMP))
	@if [ -n "$$OPENAI_API_KEY$$ANTHROPIC_API_KEY" ]; then \
		$(PIP) install --quiet -r example_apps/requirements.txt; fi
	$(BIN)/python example_apps/run_demo.py --app $(@:demo-%=%) --recording $(RECORDING) $(DEMO_ARGS)

bench: $(DEV_STAMP)
	$(BIN)/python bench/asgi_overhead.py

# What installing the package (its pytest plugin) adds to pytest's start-up.
bench-pytest: $(DEV_STAMP)
	$(BIN)/python bench/pytest_startup.py

# Load, faults and SIGTERM in every adapter over real servers; rewrites RELIABILITY.md.
# Outage sizes: RELIABILITY_OUTAGE seconds down under load, RELIABILITY_PROCESSES recordings.
RELIABILITY_OUTAGE ?= 120
RELIABILITY_PROCESSES ?= 300
reliability: $(DEV_STAMP)
	$(BIN)/pytest -m reliability tests/test_reliability.py
	$(BIN)/python bench/reliability.py
	$(BIN)/python bench/delivery.py --outage $(RELIABILITY_OUTAGE) --outage-rate 30 \
		--processes $(RELIABILITY_PROCESSES) --markdown RELIABILITY.md
	$(BIN)/python bench/reliability_celery.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis test-artifacts dist build
