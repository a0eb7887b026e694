# Every target creates .venv and installs the project with its dev extra on first use.
# Another Python: `make test PYTHON=python3.13 VENV=.venv-3.13` (what .ci/run does per Python).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# UV=/path/to/uv installs with uv instead of pip: seconds instead of half a minute (.ci/run does).
UV ?=
# The stamp names the Python it was made with, so PYTHON=another rebuilds the venv instead of
# quietly running the one made by the old interpreter.
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
STAMP := $(BIN)/.installed-python$(PY_VERSION)

.PHONY: install test lint format bench bench-quick clean

$(STAMP): pyproject.toml
ifeq ($(UV),)
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
else
	$(UV) venv --quiet --clear --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(BIN)/python -e ".[dev]"
endif
	touch $@

install: $(STAMP)

test: install  ## unit, integration (SQLite file + PostgreSQL), migration and fault tests
	$(BIN)/python -m pytest $(ARGS)

lint: install  ## ruff, ruff format --check, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install  ## SQLite and PostgreSQL side by side (ARGS="--postgres URL" or "--sqlite-only")
	$(BIN)/python -m benchmarks $(ARGS)

bench-quick: install
	$(BIN)/python -m benchmarks --quick $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
