# lfm2-edge: `make install` then `make test`.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
BACKEND ?= cpu
JOBS    ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)

# CMake flags for llama-cpp-python's build of llama.cpp, per backend.
CMAKE_ARGS_cpu    :=
CMAKE_ARGS_cuda   := -DGGML_CUDA=on
CMAKE_ARGS_metal  := -DGGML_METAL=on
CMAKE_ARGS_vulkan := -DGGML_VULKAN=on

# What llama-cpp-python loads is libllama, libggml* and libmtmd. Its CMakeLists forces on
# llama.cpp's `common` library (and cpp-httplib with it), which it never loads (it even
# installs three copies of libllama-common.so into site-packages/lib): 193 build steps
# instead of 136. scripts/llama_cpp_minimal.cmake turns it off again right after
# llama.cpp's project(). Tests, examples, tools and the server are off already
# (llama.cpp is a subproject there).
MINIMAL := -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/scripts/llama_cpp_minimal.cmake
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
# pip is silent for the minutes llama.cpp compiles: this shows progress and a heartbeat
PIP_PROGRESS := $(PYTHON) scripts/pip_progress.py

ifeq ($(filter $(BACKEND),cpu cuda metal vulkan),)
$(error BACKEND must be one of cpu, cuda, metal, vulkan (got '$(BACKEND)'))
endif

.PHONY: install browser test interop lint models bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	@echo "installing $(LLAMA_CPP_PYTHON) ($(BACKEND)): the first time, pip compiles llama.cpp (see the README for how long)"
ifneq ($(BACKEND),cpu)
	# pip caches the CPU wheel; a GPU backend must be built afresh with its flags.
	CMAKE_ARGS="$(CMAKE_ARGS_$(BACKEND)) $(MINIMAL)" CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) PIP_LOG=$(VENV)/pip-llama.log \
		$(PIP_PROGRESS) $(BIN)/pip install --no-cache-dir --force-reinstall --no-deps "$(LLAMA_CPP_PYTHON)"
else
	CMAKE_ARGS="$(MINIMAL)" CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) PIP_LOG=$(VENV)/pip-llama.log \
		$(PIP_PROGRESS) $(BIN)/pip install "$(LLAMA_CPP_PYTHON)"
endif
	PIP_LOG=$(VENV)/pip-install.log $(PIP_PROGRESS) $(BIN)/pip install -e '.[dev]'

# tests/server/web drive Debian's chromium with playwright (from '.[dev]'); never `playwright install`.
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

test:
	$(BIN)/pytest -q

# The client matrix: openai, LiteLLM, langchain-openai, instructor, the Agents SDK, llm and ollama
# against a real `lfm2-edge serve`, offline.
interop: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[interop]'
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/pytest -q tests/interop

lint:
	$(BIN)/ruff check lfm2_edge tests scripts
	$(BIN)/mypy

models:
	$(BIN)/python -m lfm2_edge.testing --shape tiny --out models/tiny
	$(BIN)/python -m lfm2_edge.testing --shape lfm2-vl-450m --out models/lfm2-vl-450m

bench: models
	$(BIN)/lfm2-edge bench --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
