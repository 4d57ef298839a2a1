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
	touch $(BIN)/victor

install: $(BIN)/victor

demo: install
	$(BIN)/victor demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) victor-demo runs
