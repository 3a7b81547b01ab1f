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

ifeq ($(filter $(BACKEND),cpu cuda metal vulkan),)
$(error BACKEND must be one of cpu, cuda, metal, vulkan (got '$(BACKEND)'))
endif

.PHONY: install test interop lint models bench container-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
ifneq ($(BACKEND),cpu)
	# pip caches the CPU wheel; a GPU backend must be built afresh with its flags.
	CMAKE_ARGS="$(CMAKE_ARGS_$(BACKEND))" CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) \
		$(BIN)/pip install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
endif
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BIN)/pip install -e '.[dev]'

test:
	$(BIN)/pytest -q

# The client matrix: openai, LiteLLM, langchain-openai, instructor, the Agents SDK and llm
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

# The container image built from nothing (a Debian base made by mmdebstrap, no image
# registry) and run: /health and one chat on a synthetic model. Root, podman, ~30 min on
# 2 cores; not part of `make test` (docs/deploy.md, "Containers").
container-check:
	bash scripts/container-check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
