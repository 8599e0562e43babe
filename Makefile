# Two commands from a fresh clone: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench install clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a local CPU build satisfies pyproject's range, so pip pulls no CUDA packages for it.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/simsearch demo

lint: $(STAMP)
	$(BIN)/ruff check simsearch tests bench
	$(BIN)/ruff format --check simsearch tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The web page's tests drive Debian's chromium (playwright never downloads a browser here). CI runs as root on
# Debian, so install it there when missing; elsewhere, or when apt-get cannot, those tests skip and say why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || \
		echo "chromium could not be installed: browser tests will skip"; \
	else \
		echo "no chromium (apt-get install chromium): browser tests will skip"; \
	fi

test: lint browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) simsearch-demo indexes/demo indexes/demo-pixels .pytest_cache .mypy_cache .ruff_cache
