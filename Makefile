# Quickstart targets. `make demo` and `make test` install into .venv first.
# TORCH pins the CPU wheel that lies on this project's machines; on a GPU machine run
# `make TORCH=torch install` (or plain `pip install -e .`) to get your platform's build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# The web chat's tests run in their own environment: Gradio caps pillow below 13, and the data path
# (training, `victor data check`) keeps the newest pillow in .venv. WEB_PINS: the versions the
# browser tests drive (Gradio's page changes between releases); users get `victor[web]`'s range.
WEB_VENV ?= .venv-web
WEB_BIN := $(WEB_VENV)/bin
WEB_PINS ?= gradio==6.31.0 selenium==4.51.0

.PHONY: install web-env browser demo test test-web mutation clean

$(BIN)/victor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# DeepSpeed builds its CUDA ops on first use; without a GPU (and in CI) install it without them,
	# against the torch above (no build isolation: its setup imports torch)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation "deepspeed>=0.16"
	touch $(BIN)/victor

install: $(BIN)/victor

$(WEB_VENV)/.built: pyproject.toml Makefile
	$(PYTHON) -m venv $(WEB_VENV)
	$(WEB_BIN)/python -m pip install --quiet "$(TORCH)"
	$(WEB_BIN)/python -m pip install --quiet -e ".[web]" "pytest>=7" $(WEB_PINS)
	touch $@

# .venv-web: victor with Gradio (and the pillow Gradio allows), pytest and Selenium
web-env: $(WEB_VENV)/.built

# Debian's chromium and its driver for the browser tests (needs root; CI runs it; nothing else
# downloads a browser). Without them the browser tests skip locally and fail under CI=true.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver are installed"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

demo: install
	$(BIN)/victor demo

# the suite in .venv, then the web chat's tests (tests/web: HTTP API and a real browser) in .venv-web
test: install web-env
	$(BIN)/python -m pytest --ignore=tests/web
	$(WEB_BIN)/python -m pytest tests/web

test-web: web-env
	$(WEB_BIN)/python -m pytest tests/web

# Mutation testing of the method's core (stage 1.5, matching, label masking, metrics): the
# files and tests are in pyproject.toml [tool.mutmut]; scores and survivors in docs/testing.md.
# Not part of `make test` (a full run took 40 min on 2 cores). Results are cached in mutants/:
# a second run re-tests only what changed.
mutation: install
	$(BIN)/python -m pip install --quiet "mutmut==3.8.1"
	HF_HUB_OFFLINE=1 $(BIN)/mutmut run --max-children 2
	$(BIN)/python tools/mutation_report.py

clean:
	rm -rf $(VENV) $(WEB_VENV) victor-demo runs mutants
