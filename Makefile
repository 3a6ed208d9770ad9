# Two entry points for a fresh machine (see README):
#   make run   installs everything and runs the main job on the embedded default model
#   make test  installs everything and runs the test suite
PY ?= python3
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install run test lint

# torch first, pinned: pip then takes the local CPU wheel instead of a multi-GB CUDA build.
install:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"

run: install
	zorba run --memory-model configs/memory/minilm-sst2-cpu.json --out runs/default --overwrite

test: install
	$(PY) -m pytest -q

lint:
	ruff check src tests benchmarks
