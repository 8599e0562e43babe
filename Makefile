# Two commands from a fresh clone: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a local CPU build satisfies pyproject's range, so pip pulls no CUDA packages for it.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/simsearch demo

lint: $(STAMP)
	$(BIN)/ruff check simsearch tests bench
	$(BIN)/ruff format --check simsearch tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) simsearch-demo indexes/demo indexes/demo-pixels .pytest_cache .mypy_cache .ruff_cache
