# Quick start: `make run` (default experiment) and `make test` (test suite) on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The PyTorch build to install; override for another platform, e.g. TORCH="torch torchvision".
TORCH ?= torch==2.14.1 torchvision==0.29.1
DATA_DIR ?= $(abspath ../shared/datasets)
ARGS ?=
export DATA_DIR
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
# OpenMP threads that spin after each op steal the cores from the working ones on a small CPU.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install run test lint bench quality report clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m experiments.train experiments/configs/fmnist_vs_mnist.yaml $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

# Lint, format check and types: CI fails on any finding.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks.knn_search
	$(PY) -m benchmarks.training_loop
	$(PY) -m benchmarks.scoring
	$(PY) -m benchmarks.end_to_end
	$(PY) -m benchmarks.report

# Every variant x 3 seeds on every benchmark (about 2.5 hours on 2 cores), then the README tables.
quality: install
	$(PY) -m benchmarks.quality $(ARGS)
	$(PY) -m benchmarks.report

report: install
	$(PY) -m benchmarks.report

clean:
	rm -rf outputs wandb lightning_logs .pytest_cache
