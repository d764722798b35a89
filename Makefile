# The two commands of the README, and the environment they share.
#   make demo   set up .venv and run the whole workflow on the embedded demo
#   make test   set up .venv and run the test suite
# TORCH picks the PyTorch build: the default takes the CPU wheel on a CPU-only
# machine with a local wheel cache, and PyPI's CUDA build on a Linux GPU machine.
# For another CUDA version: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/snakemake

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf results .snakemake
