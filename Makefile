# The two commands of the README, and the environment they share.
#   make demo   set up .venv and run the whole workflow on the embedded demo
#   make test   set up .venv and run the test suite
#   make lock   regenerate requirements/cpu.txt and cuda.txt (the newest versions
#               within pyproject.toml's bounds)
# TORCH picks the PyTorch build: the default takes the CPU wheel on a CPU-only
# machine with a local wheel cache, and PyPI's CUDA build on a Linux GPU machine.
# For another CUDA version: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# PyTorch's index of its CPU builds (the locked CPU build of torch is there, not on PyPI)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test lock clean

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

# pip-compile (pip-tools) runs without pip's config, on PyPI alone, so that the
# files name nothing local; the CPU build of torch comes from a folder holding
# the one wheel of the locked platform, downloaded first. The files' headers say
# `make lock`; --upgrade takes the newest versions within pyproject.toml's bounds.
PIP_TOOLS ?= pip-tools==7.6.2
COMPILE = env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" \
	$$tools/bin/pip-compile --quiet --upgrade --generate-hashes --strip-extras --unsafe-package mrisr \
	--no-emit-index-url --no-emit-find-links --extra test

lock:
	tools=$$(mktemp -d) && trap 'rm -rf "$$tools"' EXIT \
	  && $(PYTHON) -m venv $$tools && $$tools/bin/pip install --quiet $(PIP_TOOLS) \
	  && $$tools/bin/pip download --quiet --no-deps --only-binary :all: --implementation cp --python-version 3.11 \
	     --platform manylinux_2_28_x86_64 --index-url $(TORCH_CPU_INDEX) -d $$tools/torch -r requirements/cpu.in \
	  && $(COMPILE) --find-links $$tools/torch -o requirements/cpu.txt pyproject.toml requirements/cpu.in \
	  && $(COMPILE) -o requirements/cuda.txt pyproject.toml requirements/cuda.in

clean:
	rm -rf results .snakemake
