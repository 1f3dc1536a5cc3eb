# Two commands do all the set-up on a fresh machine with python3 and pip:
#   make train   # creates .venv if missing, installs lmjax, trains the default model
#   make test    # creates .venv if missing, installs lmjax[dev,hf], runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Corpora beside the checkout (tinyshakespeare for tests and configs); override to move them.
export LMJAX_DATA_DIR ?= $(abspath ../shared/data)
DATA_FILE := $(LMJAX_DATA_DIR)/tinyshakespeare/input.txt
DATA_MISSING = the tests need $(DATA_FILE), which is missing: put tinyshakespeare's input.txt \
  (https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt) there, \
  or set LMJAX_DATA_DIR to the folder that holds tinyshakespeare/input.txt
# The tested version of every dependency (core, dev and hf extras), as pip constraints. Refresh it
# with `make lock` after `make test` passed in .venv; to move to the newest releases that
# pyproject.toml allows: make clean && make test LOCK=/dev/null && make lock
LOCK ?= constraints.txt

.PHONY: train test install clean lock check-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The hf extra's torch, pinned to the CPU build this machine's wheel folder holds: an unpinned torch
# resolves to the newest release with several GB of CUDA packages the tests never use.
# `make test TORCH=torch LOCK=/dev/null` takes the newest instead.
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install -q -c $(LOCK) -e '.[dev]'
	touch $@

$(VENV)/.installed-hf: $(VENV)/.installed
	$(BIN)/pip install -q -c $(LOCK) '$(TORCH)' -e '.[dev,hf]'
	touch $@

# Local version labels (torch's +cpu) are dropped: ==2.13.0 accepts the CPU and the CUDA builds.
lock:
	{ echo "# Tested versions of lmjax's dependencies with the dev and hf extras (Python 3.11);"; \
	  echo "# \`make\` installs with them as constraints. Written by \`make lock\` (see Makefile)."; \
	  $(BIN)/pip freeze --all --exclude-editable --exclude pip | sed -E 's/\+[^+]*$$//'; } > $(LOCK)

install: $(VENV)/.installed

train: install
	$(BIN)/lmjax train $(ARGS)

# Two pytest workers (pytest-xdist): compiles and subprocess start-ups are single-threaded, so two
# at once on 2 cores took the suite from 13.3 to 9.2 minutes. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2

# One line, before any install, when the corpus the tests read is missing.
check-data:
	$(if $(wildcard $(DATA_FILE)),,$(error $(DATA_MISSING)))

test: check-data install $(VENV)/.installed-hf
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info
