# One entry point for humans and CI. Every target installs what it needs into its own venv.
#
#   .venv         exactly requirements/dev.lock (make test, demo, dist, docs, bench)
#   .venv-min     requirements/min.lock: pyproject's lower bounds, recent dev tools (make test-min)
#   .venv-latest  no lock: the newest versions pyproject allows (make test-latest)
#   .venv-tools   uv, which writes both locks (make lock)
#
# docs/contributing.md says when to run which.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/dev.lock
MIN_VENV := .venv-min
MIN_LOCK := requirements/min.lock
LATEST_VENV := .venv-latest
TOOLS := .venv-tools
UV_VERSION := 0.13.9
UV := $(TOOLS)/bin/uv
SRC := asyncembed tests benchmarks

# What lint, typecheck and pytest run with; test-latest points them at .venv-latest.
CHECK_BIN := $(BIN)
CHECK_NEEDS := $(STAMP)

.PHONY: test lint typecheck pytest test-latest test-min lock dist demo bench docs clean

# $(call install-locked,VENV,LOCK): VENV holds exactly LOCK (pip refuses anything
# unpinned or with another hash), then this checkout, editable, built by the locked
# setuptools. The venv is made anew when the lock changed, so nothing outside it lingers;
# a change to pyproject.toml alone only reinstalls the checkout.
define install-locked
	$(if $(filter $(2),$?),rm -rf $(1))
	test -x $(1)/bin/python || $(PY) -m venv $(1)
	$(1)/bin/python -m pip install -q --require-hashes -r $(2)
	$(1)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(1)/bin/python -m pip check
	touch $(1)/.installed
endef

$(STAMP): $(LOCK) pyproject.toml
	$(call install-locked,$(VENV),$(LOCK))

$(MIN_VENV)/.installed: $(MIN_LOCK) pyproject.toml
	$(call install-locked,$(MIN_VENV),$(MIN_LOCK))

lint: $(CHECK_NEEDS)
	$(CHECK_BIN)/ruff check $(SRC)
	$(CHECK_BIN)/ruff format --check $(SRC)

typecheck: $(CHECK_NEEDS)
	$(CHECK_BIN)/mypy $(SRC)

pytest: $(CHECK_NEEDS)
	$(CHECK_BIN)/pytest --cov --cov-report=term

test: lint typecheck pytest

# The same checks against the newest releases pyproject.toml allows (no lock): run it
# before `make lock`, and now and then to hear early about a release that breaks us.
test-latest:
	test -x $(LATEST_VENV)/bin/python || $(PY) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q -U pip
	$(LATEST_VENV)/bin/python -m pip install -q -U --upgrade-strategy eager -e '.[dev]'
	$(MAKE) --no-print-directory lint typecheck pytest CHECK_BIN=$(LATEST_VENV)/bin CHECK_NEEDS=

# pytest with every runtime dependency at the lower bound in pyproject.toml.
test-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/pytest

$(UV):
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION)

# Rewrites both locks from pyproject.toml, every package at its newest allowed version
# (`make lock LOCK_UPGRADE=` keeps the current pins wherever they still fit). One lock
# for every platform and Python >= 3.11 (--universal), with hashes. The lower-bound lock is
# for Linux and Python 3.11 only: the lowest numpy has no wheels for newer Pythons, where the
# integrations' test tools (langchain-tests) need numpy >= 2.1.
LOCK_UPGRADE ?= --upgrade
COMPILE = $(UV) pip compile pyproject.toml --universal --python-version 3.11 --quiet
lock: $(UV)
	mkdir -p requirements
	$(COMPILE) $(LOCK_UPGRADE) --extra dev --generate-hashes \
		--custom-compile-command 'make lock' -o $(LOCK)
	$(COMPILE) --resolution lowest-direct --extra parquet --no-deps --no-header --no-annotate \
		-o $(TOOLS)/min-direct.txt
	$(UV) pip compile pyproject.toml --python-version 3.11 --python-platform linux --quiet \
		$(LOCK_UPGRADE) --extra dev --generate-hashes -c $(TOOLS)/min-direct.txt \
		--custom-compile-command 'make lock' -o $(MIN_LOCK)

# sdist and wheel into dist/ (the wheel built from the sdist, by the locked setuptools),
# then their metadata checked as PyPI would.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --quiet --no-isolation --outdir dist .
	$(BIN)/twine check --strict dist/*

demo: $(STAMP)
	mkdir -p out && $(BIN)/python -m asyncembed embed asyncembed/data/corpus.txt -o out/demo.npy --overwrite --local --local-latency 0.2 --batch-size 64 --concurrency 4 --model openai/text-embedding-3-small --query "the sea at night"

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(MIN_VENV) $(LATEST_VENV) $(TOOLS) out dist build .mypy_cache .pytest_cache .ruff_cache

docs: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[docs]'
	$(BIN)/mkdocs build --strict --site-dir site
