# Quickstart targets. `make demo` and `make test` install into .venv first.
# TORCH pins the CPU wheel that lies on this project's machines; on a GPU machine run
# `make TORCH=torch install` (or plain `pip install -e .`) to get your platform's build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test mutation clean

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

# Mutation testing of the method's core (stage 1.5, matching, label masking, metrics): the
# files and tests are in pyproject.toml [tool.mutmut]; scores and survivors in docs/testing.md.
# Not part of `make test` (a full run took 40 min on 2 cores). Results are cached in mutants/:
# a second run re-tests only what changed.
mutation: install
	$(BIN)/python -m pip install --quiet "mutmut==3.8.1"
	HF_HUB_OFFLINE=1 $(BIN)/mutmut run --max-children 2
	$(BIN)/python tools/mutation_report.py

clean:
	rm -rf $(VENV) victor-demo runs mutants
