# Everything a fresh machine (python3 and nothing else) needs, from two commands:
#   make demo   the FastAPI example chat app recording into the local Freeplay server
#   make test   ruff, mypy --strict on the package, and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck pytest demo demo-fastapi demo-flask demo-django bench reliability clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

# The example chat app (FastAPI, Flask or Django) and the local Freeplay page; Ctrl-C stops
# both. Pass options with DEMO_ARGS, e.g. make demo DEMO_ARGS="--port 8001 --db :memory:".
# With OPENAI_API_KEY or ANTHROPIC_API_KEY set, the provider's SDK is installed and used.
DEMO_ARGS ?=

demo: demo-fastapi

demo-fastapi demo-flask demo-django: $(STAMP)
	@if [ -n "$$OPENAI_API_KEY$$ANTHROPIC_API_KEY" ]; then \
		$(BIN)/python -m pip install --quiet -r example_apps/requirements.txt; fi
	$(BIN)/python example_apps/run_demo.py --app $(@:demo-%=%) $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/asgi_overhead.py

# Load, faults and SIGTERM in every adapter over real servers; rewrites RELIABILITY.md.
reliability: $(STAMP)
	$(BIN)/python bench/reliability.py
	$(BIN)/python bench/reliability_celery.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis test-artifacts
