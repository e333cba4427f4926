# labelops: `make demo` and `make test` set up everything they need on a fresh machine (Python 3.11).
SHELL := /bin/bash
PYTHON ?= python3.11
ROOT := $(abspath .)
TOOLS := $(ROOT)/.venv-tools
UV := $(TOOLS)/bin/uv
VENV := $(ROOT)/.venv
LS_VENV := $(ROOT)/.venv-ls
DVC_VENV := $(ROOT)/.venv-dvc
export UV_PYTHON_DOWNLOADS := never
# include/ (labelops) and plugins/ on the path everywhere, as in the Airflow processes and the compose image.
export PYTHONPATH := $(ROOT)/include:$(ROOT)/plugins
export PATH := $(VENV)/bin:$(PATH)
RUN := $(VENV)/bin/python

.PHONY: help setup demo test bench chaos soak stack-up stack-status stack-down clean
help:
	@echo "make demo          set up, start the local stack, run the demo project end to end"
	@echo "make test          set up and run the whole test suite (starts and stops its own stack)"
	@echo "make bench         benchmarks: ours against a baseline, side by side"
	@echo "make chaos         the fault and hostile-input suites, printing their tables (also part of make test)"
	@echo "make soak          the whole loop at load (100k records, ~30k annotations) on a stack of its own (var/soak)"
	@echo "make stack-up | stack-status | stack-down    the local stack by hand (state in var/stack)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==0.13.8

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(UV)
	test -x $(VENV)/bin/python || $(UV) venv --quiet -p $(PYTHON) $(VENV)
	$(UV) pip install --quiet -p $(VENV)/bin/python -r requirements-dev.txt
	touch $@

$(LS_VENV)/.installed: requirements-label-studio.txt | $(UV)
	test -x $(LS_VENV)/bin/python || $(UV) venv --quiet -p $(PYTHON) $(LS_VENV)
	$(UV) pip install --quiet -p $(LS_VENV)/bin/python -r requirements-label-studio.txt
	touch $@

$(DVC_VENV)/.installed: requirements-dvc.txt | $(UV)
	test -x $(DVC_VENV)/bin/python || $(UV) venv --quiet -p $(PYTHON) $(DVC_VENV)
	$(UV) pip install --quiet -p $(DVC_VENV)/bin/python -r requirements-dvc.txt
	touch $@

setup: $(VENV)/.installed $(LS_VENV)/.installed $(DVC_VENV)/.installed

demo: setup
	$(RUN) tools/demo.py

test: setup
	$(RUN) -m pytest

bench: setup
	$(RUN) bench/run.py

chaos: setup
	$(RUN) -m pytest -s -p no:cacheprovider tests/test_faults.py tests/test_hostile_input.py

soak: setup
	$(RUN) tools/soak.py

stack-up: setup
	$(RUN) tools/stack.py up

stack-status: setup
	$(RUN) tools/stack.py status

stack-down: setup
	$(RUN) tools/stack.py down

clean: stack-down
	if [ -d var/soak ]; then LABELOPS_STATE=$(ROOT)/var/soak LABELOPS_PORT_BASE=8880 $(RUN) tools/stack.py down; fi
	rm -rf var
