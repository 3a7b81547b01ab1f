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
# ggml's AMX kernels (compiled in by -march=native on Sapphire Rapids and later Xeons)
# segfault in ggml_backend_amx_mul_mat on the first quantized matmul (llama.cpp #20824,
# closed without a fix; seen here with Q4_0 and Q8_0 models, F16 unaffected): build without them.
# Q4_0 then runs llama.cpp's AVX-512 repacked kernels. Explicit -mno-* flags win over
# -march=native in gcc and clang whatever their order.
ifeq ($(shell uname -m),x86_64)
NO_AMX := CFLAGS="$(CFLAGS) -mno-amx-tile -mno-amx-int8 -mno-amx-bf16" CXXFLAGS="$(CXXFLAGS) -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
endif
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
# The environment of every build of it: the flags above, this backend's, the jobs, the log
LLAMA_BUILD_ENV = $(NO_AMX) CMAKE_ARGS="$(CMAKE_ARGS_$(BACKEND)) $(MINIMAL)" CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) PIP_LOG=$(VENV)/pip-llama.log
# pip is silent for the minutes llama.cpp compiles: this shows progress and a heartbeat
PIP_PROGRESS := $(PYTHON) scripts/pip_progress.py

ifeq ($(filter $(BACKEND),cpu cuda metal vulkan),)
$(error BACKEND must be one of cpu, cuda, metal, vulkan (got '$(BACKEND)'))
endif

# The reference (tests/reference, scripts/reference): transformers' LFM2-VL in a venv of its
# own, never a dependency of lfm2-edge. torch 2.14.1 / torchvision 0.29.1 wheels for
# Python 3.11; llama-cpp-python 0.3.36's sdist for its convert_hf_to_gguf.py.
REF_VENV   ?= .ref-venv
REF_PYBASE ?= python3.11
REF_BIN    := $(REF_VENV)/bin
REF_PKGS   := torch==2.14.1 torchvision==0.29.1 transformers==5.24.0 gguf==0.19.0 safetensors tokenizers sentencepiece protobuf numpy pillow
REF_CONVERTER := $(REF_VENV)/src/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py

.PHONY: install browser test interop lint models bench container-check clean reference reference-venv reference-report

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	@echo "installing $(LLAMA_CPP_PYTHON) ($(BACKEND)): the first time, pip compiles llama.cpp (see the README for how long)"
ifneq ($(BACKEND),cpu)
	# pip caches the CPU wheel; a GPU backend must be built afresh with its flags.
	$(LLAMA_BUILD_ENV) $(PIP_PROGRESS) $(BIN)/pip install --no-cache-dir --force-reinstall --no-deps "$(LLAMA_CPP_PYTHON)"
else
	$(LLAMA_BUILD_ENV) $(PIP_PROGRESS) $(BIN)/pip install "$(LLAMA_CPP_PYTHON)"
endif
	PIP_LOG=$(VENV)/pip-install.log $(PIP_PROGRESS) $(BIN)/pip install -e '.[dev]'
# pip's wheel cache hands back the first llama-cpp-python it built, whatever the flags are
# now (a wheel from before NO_AMX, or from another CPU): one that would crash here is
# dropped from the cache and built again, with the flags above.
	@$(BIN)/python scripts/check_llama_build.py || { \
		echo "rebuilding $(LLAMA_CPP_PYTHON) for this CPU: pip's cached wheel does not fit it"; \
		$(BIN)/pip cache remove llama_cpp_python || true; \
		$(LLAMA_BUILD_ENV) $(PIP_PROGRESS) $(BIN)/pip install --force-reinstall --no-deps "$(LLAMA_CPP_PYTHON)" && \
		$(BIN)/python scripts/check_llama_build.py; }

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

# Installs the reference venv; where torch cannot be installed the reference tests skip
# with one line saying so.
reference-venv: $(REF_CONVERTER)

$(REF_BIN)/python:
	$(REF_PYBASE) -m venv $(REF_VENV)

$(REF_CONVERTER): $(REF_BIN)/python
	$(REF_BIN)/pip install --quiet $(REF_PKGS)
	$(REF_BIN)/pip download --quiet --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d $(REF_VENV)/src
	tar xzf $(REF_VENV)/src/llama_cpp_python-0.3.36.tar.gz -C $(REF_VENV)/src \
		llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-0.3.36/vendor/llama.cpp/conversion \
		llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py

# lfm2-edge against transformers on a small random LFM2-VL (docs/fidelity.md): the tests;
# `make reference-report` prints the whole table (and writes reference-report.json).
REF_ENV = LFM2_REF_PYTHON=$(abspath $(REF_BIN))/python LFM2_REF_CONVERTER=$(abspath $(REF_CONVERTER))

reference: $(BIN)/python
	-$(MAKE) reference-venv
	$(REF_ENV) $(BIN)/pytest -q tests/reference

reference-report: $(BIN)/python reference-venv
	$(REF_ENV) $(BIN)/python scripts/reference/compare.py --json reference-report.json

models:
	$(BIN)/python -m lfm2_edge.testing --shape tiny --out models/tiny
	$(BIN)/python -m lfm2_edge.testing --shape lfm2-vl-450m --out models/lfm2-vl-450m

bench: models
	$(BIN)/lfm2-edge bench --json

# The container image built from nothing (a Debian base made by mmdebstrap, no image
# registry) and run: /health and one chat on a synthetic model. Root, podman, ~50 min on
# 2 busy cores; not part of `make test` (docs/deploy.md, "Containers").
container-check:
	bash scripts/container-check.sh

clean:
	rm -rf $(VENV) $(REF_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
