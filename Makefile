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

bench: $(STAMP)
	$(BIN)/python bench/asgi_overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis test-artifacts
