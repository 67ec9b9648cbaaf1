# Switchboard: `make run` serves on the embedded defaults, `make test` lints and runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
REDIS_INSTALL := apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server
CHROMIUM_INSTALL := apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
WRK_INSTALL := apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk

.PHONY: run test lint pytest bench fuzz chaos servers browser load-tool clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps re-run pip only when a requirements file changes.
$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	mkdir -p var
	$(BIN)/python app.py serve

# Servers the contract tests start on free ports: PostgreSQL comes with the machine
# (PG_BIN or /usr/lib/postgresql/*/bin); redis-server is installed here when missing.
servers:
	@if command -v redis-server >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then echo "installing redis-server"; ( $(REDIS_INSTALL) ) >/dev/null; \
	elif [ "$$CI" = true ]; then echo "redis-server is missing; run as root: $(REDIS_INSTALL)"; exit 1; \
	else echo "redis-server is missing (tests that need it will skip): $(REDIS_INSTALL)"; fi

# The page test of /docs drives Debian's headless chromium.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then echo "installing chromium"; ( $(CHROMIUM_INSTALL) ) >/dev/null; \
	elif [ "$$CI" = true ]; then echo "chromium is missing; run as root: $(CHROMIUM_INSTALL)"; exit 1; \
	else echo "chromium is missing (the /docs page test will skip): $(CHROMIUM_INSTALL)"; fi

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

pytest: $(VENV)/.dev servers browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint pytest

# The load generator of make bench: wrk when it can be installed, else a Python one.
load-tool:
	@if command -v wrk >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then echo "installing wrk"; ( $(WRK_INSTALL) ) >/dev/null || true; \
	else echo "wrk is missing (the Python load generator is used; its figures are lower): $(WRK_INSTALL)"; fi

bench: $(VENV)/.dev servers load-tool
	$(BIN)/python -m tests.bench.run

# The nightly sizes of what the suite runs small: the fuzz harness (schemathesis and
# hypothesis against a served process) and the fault suite (Redis, PostgreSQL, workers).
FUZZ_EXAMPLES ?= 300
CHAOS_SCALE ?= 10
fuzz: $(VENV)/.dev servers
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_fuzz.py $(PYTEST_ARGS)

chaos: $(VENV)/.dev servers
	CHAOS_SCALE=$(CHAOS_SCALE) $(BIN)/python -m pytest tests/test_chaos.py tests/test_faults.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
