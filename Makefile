# Two commands do all the set-up on a fresh machine with python3 and pip:
#   make train   # creates .venv if missing, installs lmjax, trains the default model
#   make test    # creates .venv if missing, installs lmjax[dev,hf], runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Corpora beside the checkout (tinyshakespeare for tests and configs); override to move them.
export LMJAX_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: train test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The hf extra's torch, pinned to the CPU build this machine's wheel folder holds: an unpinned torch
# resolves to the newest release with several GB of CUDA packages the tests never use.
# `make test TORCH=torch` takes the newest instead.
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.installed-hf: $(VENV)/.installed
	$(BIN)/pip install -q '$(TORCH)' -e '.[dev,hf]'
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/lmjax train $(ARGS)

# Two pytest workers (pytest-xdist): compiles and subprocess start-ups are single-threaded, so two
# at once on 2 cores took the suite from 13.3 to 9.2 minutes. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2

test: install $(VENV)/.installed-hf
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info
