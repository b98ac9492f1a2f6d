# One entry point for humans and CI. Every target installs what it needs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check asyncembed tests benchmarks
	$(BIN)/ruff format --check asyncembed tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy asyncembed tests benchmarks

pytest: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term

test: lint typecheck pytest

demo: $(STAMP)
	mkdir -p out && $(BIN)/python -m asyncembed embed asyncembed/data/corpus.txt -o out/demo.npy --local --local-latency 0.2 --batch-size 64 --concurrency 4 --model openai/text-embedding-3-small --query "the sea at night"

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) out .mypy_cache .pytest_cache .ruff_cache

docs: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[docs]'
	$(BIN)/mkdocs build --strict --site-dir site
