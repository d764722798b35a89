# The two commands of the README, and the environment they share.
#   make demo   set up .venv and run the whole workflow on the embedded demo
#   make test   set up .venv and run the test suite
#   make lock   regenerate requirements/cpu.txt and cuda.txt (the newest versions
#               within pyproject.toml's bounds); then `make install` installs them
#
# LOCK picks what .venv gets:
#   cpu   the exact versions of requirements/cpu.txt, checked against their hashes,
#         with PyTorch's CPU build of torch (the default without an NVIDIA GPU)
#   cuda  requirements/cuda.txt: the same versions, with PyPI's build of torch for
#         CUDA and NVIDIA's libraries (the default where nvidia-smi is found)
#   0     no lock: $(TORCH), then the newest versions within pyproject.toml's bounds
# The lock files are resolved for CPython 3.11 on Linux x86_64; with another
# Python or system the default is LOCK=0, and `make install` says so.
# TORCH applies to LOCK=0 only, e.g. another CUDA version:
#   make demo LOCK=0 TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

# Where the CPU build of the locked torch comes from when pip's own find-links
# (a local wheel cache) do not hold it. Only torch is looked up there.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
LOCK_PLATFORM := cpython-3.11-Linux-x86_64
platform := $(shell $(PYTHON) -c 'import platform, sys; print(sys.implementation.name, "%d.%d" % sys.version_info[:2], platform.system(), platform.machine(), sep="-")')
ifndef LOCK
LOCK := $(if $(filter $(LOCK_PLATFORM),$(platform)),$(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu),0)
endif

.PHONY: install demo test lock clean

$(VENV)/.installed-$(LOCK): pyproject.toml $(if $(filter-out 0,$(LOCK)),requirements/$(LOCK).txt)
	$(PYTHON) -m venv --clear $(VENV)
ifeq ($(LOCK),0)
	@if [ "$(origin LOCK)" = file ]; then echo "note: requirements/*.txt are for $(LOCK_PLATFORM), this is $(platform): installing the newest versions instead"; fi
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
else
ifeq ($(LOCK),cpu)
# torch first, alone: from pip's find-links if they hold the locked file, else from PyTorch's index
	awk '/^torch==/ {p = 1; print; next} p && /^ / {print; next} {p = 0}' requirements/cpu.txt > $(VENV)/torch.txt
	$(BIN)/pip install --quiet --no-deps --require-hashes --no-index -r $(VENV)/torch.txt 2>/dev/null \
	  || $(BIN)/pip install --quiet --no-deps --require-hashes --index-url $(TORCH_CPU_INDEX) -r $(VENV)/torch.txt
endif
	$(BIN)/pip install --quiet --no-deps --require-hashes -r requirements/$(LOCK).txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
endif
	touch $@

install: $(VENV)/.installed-$(LOCK)

demo: install
	$(BIN)/snakemake

# Test files are spread over PYTEST_WORKERS processes (pytest-xdist; a file's tests stay together, so its
# fixtures are made once): the suite's end-to-end runs wait on jobs and on Slurm's polls, and most of
# the rest is single-threaded, so two workers keep two cores busy. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

# pip-compile (pip-tools) runs without pip's config, on PyPI alone, so that the
# files name nothing local; the CPU build of torch comes from a folder holding
# the one wheel of the locked platform, downloaded first. The files' headers say
# `make lock`; --upgrade takes the newest versions within pyproject.toml's bounds.
PIP_TOOLS ?= pip-tools==7.6.2
COMPILE = env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" \
	$$tools/bin/pip-compile --quiet --upgrade --generate-hashes --strip-extras --unsafe-package mrisr \
	--no-emit-index-url --no-emit-find-links --extra test

lock:
	@[ "$(platform)" = "$(LOCK_PLATFORM)" ] || { echo "make lock: the lock files are for $(LOCK_PLATFORM), this is $(platform) (PYTHON=...)"; exit 1; }
	tools=$$(mktemp -d) && trap 'rm -rf "$$tools"' EXIT \
	  && $(PYTHON) -m venv $$tools && $$tools/bin/pip install --quiet $(PIP_TOOLS) \
	  && $$tools/bin/pip download --quiet --no-deps --only-binary :all: --implementation cp --python-version 3.11 \
	     --platform manylinux_2_28_x86_64 --index-url $(TORCH_CPU_INDEX) -d $$tools/torch -r requirements/cpu.in \
	  && $(COMPILE) --find-links $$tools/torch -o requirements/cpu.txt pyproject.toml requirements/cpu.in \
	  && $(COMPILE) -o requirements/cuda.txt pyproject.toml requirements/cuda.in

clean:
	rm -rf results .snakemake
