# Longtail: the two commands are `make run` (the whole suite with the demo catalogue) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
GEN := clients/python/longtail
PROTOS := $(shell find protos -name '*.proto')
# The tests that need PostgreSQL, Triton, node/npm (the Node client), openssl (TLS) or a browser
# (headless Chromium, the dashboard test) fail, never skip, when those are unusable, unless told
# otherwise, e.g. make test REQUIRE_POSTGRES=0; likewise REQUIRE_TRITON=0, REQUIRE_NODE=0,
# REQUIRE_OPENSSL=0, REQUIRE_BROWSER=0 (the tests are then reported as skipped).
REQUIRE_POSTGRES ?= 1
REQUIRE_TRITON ?= 1
REQUIRE_NODE ?= 1
REQUIRE_OPENSSL ?= 1
REQUIRE_BROWSER ?= 1
# apt-get as root, else through sudo.
APT_GET := $(if $(filter 0,$(shell id -u)),apt-get,sudo apt-get)

.PHONY: all setup tools protos lint format typecheck test test-fast run bench clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Everything the project needs comes from pyproject.toml; torch==2.13.0 resolves to the local CPU build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(GEN)/.generated: $(PROTOS) $(VENV)/.installed
	rm -rf $(GEN)
	mkdir -p $(GEN)
	$(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=clients/python --grpc_python_out=clients/python \
	  --mypy_out=clients/python --mypy_grpc_out=clients/python \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
	  $(PROTOS)
	find $(GEN) -type d -exec touch {}/__init__.py \;
	touch $(GEN)/py.typed
	@# The editable install maps top-level packages found at install time: re-run it now that
	@# the generated `longtail` package exists (a fresh clone has none before this step).
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# System tools, installed (Debian/Ubuntu packages) only when absent: node and npm build and test
# the Node client; openssl makes the certificates of the TLS tests; Debian's headless-capable
# chromium is the browser Playwright drives in the dashboard test (Playwright's own browser
# download is not used: tests/dashboard points it at /usr/bin/chromium).
tools:
	@command -v openssl >/dev/null || ($(APT_GET) update && $(APT_GET) install -y openssl)
	@(command -v node && command -v npm) >/dev/null || \
	  ($(APT_GET) update && $(APT_GET) install -y nodejs npm)
	@test -x /usr/bin/chromium || ($(APT_GET) update && $(APT_GET) install -y chromium)

NODE_CLIENT := clients/node
# The Node client's packages, exactly as its package-lock.json says (npm registry).
$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json | tools
	cd $(NODE_CLIENT) && npm ci --no-audit --no-fund

# Offline caches for the tests of the clients a backend installs (tests/client/packaging.py): a
# wheelhouse with the client wheel's dependencies at the suite's versions and its build backend,
# and an npm cache holding what installing the Node client's tarball resolves (PyPI, npm registry).
CLIENT_CACHES := .cache/.filled
$(CLIENT_CACHES): clients/python/pyproject.toml $(NODE_CLIENT)/package.json $(VENV)/.installed | tools
	$(BIN)/python -m tests.client.packaging

setup: tools $(GEN)/.generated $(NODE_CLIENT)/node_modules/.package-lock.json $(CLIENT_CACHES)
protos: $(GEN)/.generated

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/buf lint
	@# A contract change that breaks callers fails the build (skipped only where no main exists).
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:protos 2>/dev/null; then \
	  $(BIN)/buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no local main branch with protos/; skipped"; fi
	$(BIN)/mypy services clients/python/longtail_client tests benchmarks deploy/env_table.py

test: lint
	LONGTAIL_REQUIRE_POSTGRES=$(REQUIRE_POSTGRES) LONGTAIL_REQUIRE_TRITON=$(REQUIRE_TRITON) \
	  LONGTAIL_REQUIRE_NODE=$(REQUIRE_NODE) LONGTAIL_REQUIRE_OPENSSL=$(REQUIRE_OPENSSL) \
	  LONGTAIL_REQUIRE_BROWSER=$(REQUIRE_BROWSER) \
	  $(BIN)/pytest -q

# Unit tests only: no Triton, no PostgreSQL.
test-fast: setup
	$(BIN)/pytest -q -m 'not triton and not postgres'

# The main job: Triton + all five services on SQLite, demo catalogue loaded, indexed and trained,
# a Recommend answer printed; then serves until Ctrl-C.
run: setup
	$(BIN)/longtail demo

clean:
	rm -rf $(GEN) .longtail .mypy_cache .ruff_cache .pytest_cache \
	  $(NODE_CLIENT)/node_modules $(NODE_CLIENT)/dist $(NODE_CLIENT)/src/generated
