# Everything the project needs, built on first use and skipped when already there.
#   make demo   start the default pool and show 32-bit workers answering
#   make test   run the test suite
#   make lint   ruff and mypy
#   make setup  only install: virtualenv + project, 32-bit runtime, demo libraries

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMPS := .make

.PHONY: setup demo test lint bench clean venv runtime32 examples

setup: venv runtime32 examples

venv: $(STAMPS)/venv

$(STAMPS)/venv: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "dllpool needs Python 3.10+ for its 64-bit side")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@mkdir -p $(STAMPS) && touch $@

# Idempotent and quick once done: the command checks its own manifest.
runtime32: venv
	$(VENV)/bin/dllpool runtime32 setup

examples:
	$(MAKE) --no-print-directory -C examples

demo: setup
	$(VENV)/bin/dllpool demo

test: setup
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/roundtrip.py
	$(PY) bench/arrays.py

clean:
	rm -rf $(STAMPS) $(VENV) .runtime32
	$(MAKE) -C examples clean
