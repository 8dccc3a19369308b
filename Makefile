# Two set-up commands, per README: `make run` and `make test`. Everything else hangs off them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GENERATED := examples/quickstart/generated/bookstore.binpb

NODE_RUNNER := examples/plugins/node

.PHONY: install build run test lint format bench clean node-runner proto services

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(GENERATED): $(STAMP) $(wildcard protos/examples/bookstore/v1/*.proto) examples/quickstart/build.py
	$(BIN)/python examples/quickstart/build.py

build: $(GENERATED)

# The Node.js example runner's packages, exactly as package-lock.json pins them.
$(NODE_RUNNER)/node_modules/.package-lock.json: $(NODE_RUNNER)/package-lock.json
	npm ci --prefix $(NODE_RUNNER) --no-audit --no-fund

node-runner: $(NODE_RUNNER)/node_modules/.package-lock.json

proto: $(STAMP)
	$(BIN)/python -m plugin_runner.codegen

run: build
	$(BIN)/python examples/quickstart/run.py

# Real Redis and etcd servers for the cluster tests, from Debian's packages (redis-server, etcd-server).
services:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make services: not root; install:$$missing (apt-get install -y$$missing)" >&2; exit 0; fi; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing

test: build node-runner services
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: build
	$(BIN)/python bench/transcode.py

clean:
	rm -rf $(VENV) examples/quickstart/generated build *.egg-info $(NODE_RUNNER)/node_modules
