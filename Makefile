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

# Debian's own python3 makes a virtualenv with pip only with its python3.X-venv package (ensurepip and the wheels it
# installs), which a fresh machine lacks: as root, apt installs it first (apt-get update only when the install fails,
# and a failed update is no stop: the lists apt has are usually enough). A venv left without pip is made again.
VENV_PACKAGE = $(PYTHON) -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])'

$(STAMPS)/venv: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "dllpool needs Python 3.10+ for its 64-bit side")'
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  pkg=$$($(VENV_PACKAGE)); echo "$(PYTHON) cannot make a virtualenv with pip without Debian's $$pkg"; \
	  [ "$$(id -u)" = 0 ] || { echo "as root, run: apt-get install $$pkg (then make again)"; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q $$pkg || { apt-get update -q; apt-get install -y -q $$pkg; }; }
	$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
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
