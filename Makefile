# fpcore: two commands on a fresh machine with Python 3.11.
#   make run    set up .venv, then execute every notebook (quick profile) into build/
#   make test   set up .venv, then unit tests + every notebook in JupyterLab (tests/ui), or under nbval without a browser
# Other targets: make setup | make bench | make clean
#
# torch without CUDA: on a machine where `nvidia-smi -L` finds no GPU, the set-up first installs the
# CPU build (TORCH_CPU) from PyTorch's CPU wheel index (TORCH_INDEX_URL, an extra index beside PyPI),
# or from a local wheel where pip's configuration points at one (find-links), before anything else
# could pull the multi-GB CUDA build from PyPI. `--retries 1 --timeout 20` keep pip from hanging
# where that index cannot be reached. With CUDA, pip takes its default (CUDA) torch and the gpu extra.
#
# Extras (pyproject.toml): the library alone needs none; `notebooks` is JupyterLab, ipywidgets and
# what `reproduce` uses; `test` adds pytest, nbval and Playwright. The set-up installs them all.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
UNAME := $(shell uname -s)
# PyTorch's Linux CPU builds carry the local version "+cpu"; its macOS builds are CPU-only and plain.
TORCH_CPU ?= torch==2.13.0$(if $(filter Linux,$(UNAME)),+cpu)
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
comma := ,
EXTRAS ?= notebooks$(comma)test$(if $(HAS_CUDA),$(comma)gpu)
# The JupyterLab tests: auto (skip without Chromium), required (fail without it: CI), off.
FPCORE_UI ?= auto
# Kernels' OpenMP threads sleep rather than spin while they wait (fpcore.config.KERNEL_ENV): on a shared
# machine a notebook then slows by the cores others take, not ten times and more.
OMP_WAIT_POLICY ?= PASSIVE
PYTEST_ARGS ?=

.PHONY: setup run test bench clean
.DEFAULT_GOAL := test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
ifeq ($(HAS_CUDA),)
	@echo "no CUDA here: installing the CPU build of torch ($(TORCH_CPU)) from a local wheel or $(TORCH_INDEX_URL)"
	$(PY) -m pip install --quiet --no-deps --retries 1 --timeout 20 --extra-index-url $(TORCH_INDEX_URL) "$(TORCH_CPU)"
endif
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --env OMP_WAIT_POLICY $(OMP_WAIT_POLICY) >/dev/null
	$(PY) -c "import torch, fpcore; print('fpcore', fpcore.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
	touch $@

run: setup
	OMP_WAIT_POLICY=$(OMP_WAIT_POLICY) $(PY) -m fpcore reproduce --out build

test: setup
	FPCORE_UI=$(FPCORE_UI) OMP_WAIT_POLICY=$(OMP_WAIT_POLICY) $(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m fpcore bench scan

clean:
	rm -rf build .pytest_cache
