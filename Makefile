# Longtail: the two commands are `make run` (the whole suite with the demo catalogue) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
GEN := clients/python/longtail
PROTOS := $(shell find protos -name '*.proto')
# The PostgreSQL and Triton tests fail (never skip) unless told otherwise: make test REQUIRE_POSTGRES=0
REQUIRE_POSTGRES ?= 1
REQUIRE_TRITON ?= 1

.PHONY: all setup protos lint format typecheck test test-fast run bench clean

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

NODE_CLIENT := clients/node
# The Node client's packages, exactly as its package-lock.json says (npm registry).
$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && npm ci --no-audit --no-fund

setup: $(GEN)/.generated $(NODE_CLIENT)/node_modules/.package-lock.json
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
