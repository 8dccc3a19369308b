# Two set-up commands, per README: `make run` and `make test`. Everything else hangs off them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GENERATED := examples/quickstart/generated/bookstore.binpb

NODE_RUNNER := examples/plugins/node

.PHONY: install build run test lint format bench clean node-runner proto

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

test: build node-runner
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
