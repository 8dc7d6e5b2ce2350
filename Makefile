# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create the virtualenv on first use. torch is installed first and pinned (its CPU wheel lies on
# this disk); everything else is pinned by constraints/ci.txt so every run installs the same stack.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -c constraints/ci.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/itersft demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
