# fpcore: two commands on a fresh machine with Python 3.11.
#   make run    set up .venv, then execute every notebook (quick profile) into build/
#   make test   set up .venv, then unit tests + every notebook under nbval
# Other targets: make setup | make bench | make clean
#
# On a machine without CUDA the set-up pins the CPU build of torch (TORCH_CPU) before anything
# else can pull a CUDA build; TORCH_INDEX_URL may point pip at a CPU wheel index if no local
# wheel or mirror holds it. With CUDA (nvidia-smi on the PATH) pip takes its default torch build.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
TORCH_INDEX_URL ?=
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS ?= test$(if $(HAS_CUDA),$(comma)gpu)
comma := ,
PYTEST_ARGS ?=

.PHONY: setup run test bench clean
.DEFAULT_GOAL := test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
ifeq ($(HAS_CUDA),)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_CPU)"
endif
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) -c "import torch, fpcore; print('fpcore', fpcore.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
	touch $@

run: setup
	$(PY) -m fpcore reproduce --out build

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m fpcore bench scan

clean:
	rm -rf build .pytest_cache
