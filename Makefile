# The commands of the README: `make demo`, `make test` and, for the workshop, `make lab`.
# Each creates .venv and installs eventlab into it first (once; again when pyproject.toml changes),
# showing what it installs: a first install takes about 30 s.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
WORKERS ?= 2
SITE ?= site

PIP = $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test lint up lab browser kafka postgres docs clean

# A venv with eventlab and the extras its stamp file names, in editable mode. uv (from pip, into the
# venv) installs the ~150 packages in about 30 s where pip took two minutes here: it downloads and
# byte-compiles in parallel. Compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE is set
# (this CI machine), Python would otherwise compile every module in every process the tests start.
# uv reads no pip configuration, so where it cannot install (a mirror or a wheelhouse only pip is told
# of, see docs/workshop.md) pip does it, as before: without byte-compiling, which took it ~40 s more.
$(VENV)/.installed: EXTRAS = test,docs
$(VENV)/.installed: WHAT = the test tools and the docs generator
$(VENV)/.installed-lab: EXTRAS = notebooks
$(VENV)/.installed-lab: WHAT = the notebook tools
$(VENV)/.installed $(VENV)/.installed-lab: pyproject.toml
	@echo "eventlab: installing eventlab with $(WHAT) (about 30 s the first time)..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "uv>=0.9" && $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -e ".[$(EXTRAS)]" \
	|| { echo "eventlab: uv could not install; pip instead (slower)"; $(PIP) install --progress-bar on --no-compile -e ".[$(EXTRAS)]"; }
	touch $@

lab: $(VENV)/.installed-lab  ## the workshop: JupyterLab on notebooks/01-quickstart.ipynb (prints the link)
	$(BIN)/eventlab lab $(ARGS)

demo: $(VENV)/.installed  ## run the demo shop: 100 orders through six services on Kafka
	$(BIN)/eventlab demo $(ARGS)

up: $(VENV)/.installed  ## run the shop with its HTTP endpoints until Ctrl-C
	$(BIN)/eventlab up $(ARGS)

browser:  ## headless Chromium and playwright-core for the browser test
	sh tests/browser/setup.sh

# The integration tests run on the embedded broker and on Apache Kafka (tests/apache_kafka.py): its jars
# come from Maven Central once (~45 MB, ~10 s; Java 17 and Maven needed), then from ~/.m2 offline.
kafka:  ## Apache Kafka's jars (the version compose.yaml uses) for the tests on a real broker
	scripts/kafka.sh fetch

postgres:  ## Debian's PostgreSQL, installed when missing: the tests start a throwaway cluster of their own
	sh scripts/postgres.sh install

lint: $(VENV)/.installed  ## ruff: lint and format check; mypy: the package's types, strictly (pyproject.toml)
	$(BIN)/ruff check eventlab tests benchmarks notebooks/solutions docs
	$(BIN)/ruff format --check eventlab tests benchmarks notebooks/solutions docs
	$(BIN)/mypy eventlab

# NO_MKDOCS_2_WARNING: Material for MkDocs end-of-life notice (May 2027), said once in mkdocs.yml instead.
docs: $(VENV)/.installed  ## the documentation site in $(SITE)/ (open $(SITE)/index.html); warnings are errors
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(SITE)

# The tests mostly wait (on brokers, service processes, servers), so two workers on two cores take 15 to
# 19 minutes here instead of 20 to 22; a third worker was faster on a quiet machine but drove the load to
# 19 and tests' waits past their limits. --dist loadscope keeps each test module, and each notebook's
# cells, on one worker, in order. WORKERS=0 runs them in this process.
test: $(VENV)/.installed browser kafka postgres lint  ## lint, every test (both brokers, PostgreSQL too), the notebooks and the browser test
	$(BIN)/python -m pytest --numprocesses $(WORKERS) --dist loadscope $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache tests/browser/node_modules $(SITE)
