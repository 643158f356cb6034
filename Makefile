# Two entry points for a fresh Linux machine with Python 3.11:
#   make demo   set up, benchmark the quick suite on this machine, write a report
#   make test   set up everything (incl. the test rigs' Debian packages), run all tests
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup system-deps lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned in pyproject.toml, so pip never pulls a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	sh tools/system-deps.sh

demo: setup
	$(BIN)/harness run --suite quick
	$(BIN)/harness report latest

# pytest exits 5 when it collected no tests: that must fail, not pass.
test: setup system-deps
	$(BIN)/ruff check harness backends tests
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check harness backends tests

clean:
	rm -rf $(VENV) .pytest_cache
