# Everything the project needs, built on first use and skipped when already there.
#   make demo   start the default pool and show 32-bit workers answering
#   make test   run the test suite
#   make lint   ruff and mypy
#   make setup  only install: virtualenv + project, then `dllpool setup` (the 32-bit runtime and the
#               demo libraries, with their system packages through one tolerant apt path)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMPS := .make

.PHONY: setup demo test lint bench clean venv

setup: venv
	$(VENV)/bin/dllpool setup

venv: $(STAMPS)/venv

# Debian's own python3 makes virtualenvs only with its python3-venv package (ensurepip and the wheels it installs),
# which a fresh machine lacks: apt installs it (as root; apt-get update only if the install finds no lists).
VENV_PACKAGE = echo "$(PYTHON) cannot make a virtualenv without Debian's python3-venv: installing it" && \
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv || \
	  { apt-get update -q; DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; }; }

$(STAMPS)/venv: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "dllpool needs Python 3.10+ for its 64-bit side")'
	@test -x $(PY) || $(PYTHON) -c 'import ensurepip' 2>/dev/null || $(VENV_PACKAGE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@mkdir -p $(STAMPS) && touch $@

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
	rm -rf $(STAMPS) $(VENV) .runtime32 examples/build
