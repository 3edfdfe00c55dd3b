# netorch: two commands on a fresh machine.
#   make bench   run the main job (collective benchmark on the embedded default backend)
#   make test    install everything the tests need (Docker engine, image, Python deps), run them
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NETORCH := $(VENV)/bin/netorch
# A pinned torch: on this kind of machine pip takes the CPU build on disk. Elsewhere, see the
# README ("Installing PyTorch") for a CPU-only or CUDA build.
# The version has one source, orchestrator/versions.py (TORCH_VERSION), which the image build uses too.
TORCH_VERSION := $(shell sed -n 's/^TORCH_VERSION = "\(.*\)"$$/\1/p' orchestrator/versions.py)
TORCH_SPEC ?= torch==$(TORCH_VERSION)
BACKEND ?= process
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install bench system image test test-unit typecheck clean down

help:
	@echo "make bench      - run the collective benchmark (2 ranks, all_reduce 1M..64M) on BACKEND=$(BACKEND)"
	@echo "make test       - system setup (docker.io, dockerd, offline image) + the whole test suite"
	@echo "make test-unit  - tests that need neither Docker nor the image"
	@echo "make typecheck  - mypy --strict on orchestrator/ and train/"
	@echo "make down       - remove every container/network netorch left on the daemon"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

install: $(VENV)/.installed

bench: install
	$(NETORCH) bench --backend $(BACKEND) $(BENCH_ARGS)

# Debian packages (docker.io, docker-compose, mmdebstrap, iperf3, prometheus) and a running dockerd.
system:
	bash scripts/system-setup.sh

# The offline training image (mmdebstrap base + wheelhouse); a no-op when up to date.
image: install system
	NETORCH_PYTHON=$(PY) bash scripts/build-image.sh

test: install system image
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m "not docker" $(PYTEST_ARGS)

typecheck: install
	$(PY) -m mypy

down: install
	$(NETORCH) down --all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis
