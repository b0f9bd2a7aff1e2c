# The two commands of the README's quick start: `make demo` and `make test`.
# Both create .venv and install eventlab into it first (once; again when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: demo test lint up browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed  ## run the demo shop: 100 orders through six services on Kafka
	$(BIN)/eventlab demo $(ARGS)

up: $(VENV)/.installed  ## run the shop with its HTTP endpoints until Ctrl-C
	$(BIN)/eventlab up $(ARGS)

browser:  ## headless Chromium and playwright-core for the browser test
	sh tests/browser/setup.sh

lint: $(VENV)/.installed  ## ruff: lint and format check
	$(BIN)/ruff check eventlab tests benchmarks notebooks/solutions
	$(BIN)/ruff format --check eventlab tests benchmarks notebooks/solutions

test: $(VENV)/.installed browser lint  ## lint, every test, the notebooks under nbval and the browser test
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache tests/browser/node_modules
