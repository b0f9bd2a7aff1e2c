# The two commands of the README's quick start: `make demo` and `make test`.
# Both create .venv and install eventlab into it first (once; again when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
SITE ?= site

.PHONY: demo test lint up browser docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,docs]"
	touch $@

demo: $(VENV)/.installed  ## run the demo shop: 100 orders through six services on Kafka
	$(BIN)/eventlab demo $(ARGS)

up: $(VENV)/.installed  ## run the shop with its HTTP endpoints until Ctrl-C
	$(BIN)/eventlab up $(ARGS)

browser:  ## headless Chromium and playwright-core for the browser test
	sh tests/browser/setup.sh

lint: $(VENV)/.installed  ## ruff: lint and format check
	$(BIN)/ruff check eventlab tests benchmarks notebooks/solutions docs
	$(BIN)/ruff format --check eventlab tests benchmarks notebooks/solutions docs

# NO_MKDOCS_2_WARNING: Material for MkDocs end-of-life notice (May 2027), said once in mkdocs.yml instead.
docs: $(VENV)/.installed  ## the documentation site in $(SITE)/ (open $(SITE)/index.html); warnings are errors
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(SITE)

test: $(VENV)/.installed browser lint  ## lint, every test, the notebooks under nbval and the browser test
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache tests/browser/node_modules $(SITE)
