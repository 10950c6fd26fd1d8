# batchdrop: two commands do everything from a fresh clone.
#   make run    install, start the local stack, drop the samples, wait for every manifest, print, stop
#   make test   install and run every check and test
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FILES ?=
BURST_FILES ?=
LATENCY_SECONDS ?=

.PHONY: install tools run test lint typecheck unit bench chaos clean

install: $(VENV)/.installed node_modules/.installed tools

# Debian packages the tests need: shellcheck (the deploy hooks' tests) and chromium + chromium-driver (the status
# page's browser tests, tests/browser). apt-get only where one is missing and we are root (CI); elsewhere say what
# to install (the hook tests fail without shellcheck; the browser tests skip, naming what is missing).
tools:
	@missing=""; \
	command -v shellcheck >/dev/null 2>&1 || missing="$$missing shellcheck"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (apt-get install$$missing)" >&2; \
	  fi; \
	fi

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# pytest's exit 5 (no tests collected) is a failure, never a pass.
test: install lint
	$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

run: install
	$(BIN)/batchdrop demo

# BURST_FILES: uploads of the burst scenario (Event Grid batches into the bulk endpoint's use case), default 1,000.
# LATENCY_SECONDS: seconds of steady arrivals (1 file every 2 s, 3 s tasks) in the latency scenario, default 30
# (docs/benchmark.md's figures: 120; more knobs: python -m bench --help).
bench: install
	$(BIN)/python -m bench $(if $(FILES),--files $(FILES),)
	$(BIN)/python -m bench --only burst --files $(or $(BURST_FILES),1000) --out bench/results/burst.json
	$(BIN)/python -m bench --only latency --duration $(or $(LATENCY_SECONDS),30) --out bench/results/latency.json

chaos: install
	$(BIN)/python -m pytest -m chaos tests/chaos

clean:
	rm -rf .batchdrop .mypy_cache .ruff_cache .pytest_cache
