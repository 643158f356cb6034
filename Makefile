# Two entry points for a fresh Linux machine with Python 3.11:
#   make demo   set up, benchmark the quick suite on this machine, write a report
#   make test   set up everything (incl. the test rigs' Debian packages), run all tests
#   make lab    set up, start an emulated pi4 board and a loopback pixel7 phone until Ctrl-C
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lab setup system-deps lint clean

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
	$(BIN)/harness run --suite quick --repeats 3
	$(BIN)/harness report latest

# pytest exits 5 when it collected no tests: that must fail, not pass.
test: setup system-deps
	$(BIN)/ruff check harness backends tests
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The lab's parts need the same Debian packages as the test rigs; its first start builds the
# board image (several minutes, as root).
lab: setup system-deps
	$(BIN)/harness lab up

lint: setup
	$(BIN)/ruff check harness backends tests

clean:
	rm -rf $(VENV) .pytest_cache
