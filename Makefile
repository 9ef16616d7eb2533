# loopline: the two commands of the README.
#   make demo   set up .venv (runtime only: no torch) and run the daemon on the bundled demo stream
#   make test   set up .venv with the pinned test set (incl. torch for training/export) and run
#               ruff + pytest
# Both start from nothing on a fresh clone. What gets installed is pinned in requirements/.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint bench clean system-test-deps dist

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "loopline needs Python >= 3.11 (got $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Runtime set: the daemon, ONNX Runtime and OpenVINO engines, no torch.
$(VENV)/.runtime-installed: requirements/runtime.txt pyproject.toml | $(BIN)/python
	$(PIP) install -q -r requirements/runtime.txt
	$(PIP) install -q --no-deps -e .
	touch $@

# Test set: everything, torch pinned to the build that lies on these machines' disk.
$(VENV)/.test-installed: requirements/ci.txt requirements/runtime.txt pyproject.toml | $(BIN)/python
	$(PIP) install -q -r requirements/ci.txt
	$(PIP) install -q --no-deps -e .
	touch $@ $(VENV)/.runtime-installed

demo: $(VENV)/.runtime-installed
	$(BIN)/python -m loopline.daemon.demo --seconds 30 --out runs/demo

# The browser test needs Debian's chromium + chromium-driver, the dashboard test tmux.
# Installed when missing and we are root; otherwise those tests skip and say why.
system-test-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	    && command -v tmux >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver tmux >/dev/null; } \
	  || echo "!!! could not install chromium/chromium-driver/tmux: browser and tmux tests will skip"; \
	else \
	  echo "!!! chromium/chromium-driver/tmux missing and not root: browser and tmux tests will skip"; \
	fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check loopline tests benchmarks

test: $(VENV)/.test-installed system-test-deps
	$(BIN)/ruff check loopline tests benchmarks
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/synth.py
	$(BIN)/python benchmarks/analysis.py
	$(BIN)/python benchmarks/engines.py --quick

# The wheel and sdist into dist/ (what the README's systemd section installs), built with
# the venv's setuptools (no download where it has one >= 77, as the test set does).
dist: | $(BIN)/python
	@$(BIN)/python -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' \
	  2>/dev/null || $(PIP) install -q 'setuptools>=77'
	rm -rf build dist/loopline-*
	$(PIP) wheel -q --no-deps --no-build-isolation -w dist .
	$(BIN)/python -c 'from setuptools import build_meta as b; b.build_sdist("dist")' >/dev/null
	@ls -l dist/loopline-*

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
