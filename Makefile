# Quickstart targets. `make demo` and `make test` install into .venv first.
# TORCH pins the CPU wheel that lies on this project's machines; on a GPU machine run
# `make TORCH=torch install` (or plain `pip install -e .`) to get your platform's build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/victor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# DeepSpeed builds its CUDA ops on first use; without a GPU (and in CI) install it without them,
	# against the torch above (no build isolation: its setup imports torch)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation "deepspeed>=0.16"
	touch $(BIN)/victor

install: $(BIN)/victor

demo: install
	$(BIN)/victor demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) victor-demo runs
