#!/usr/bin/env bash
# Build llama.cpp's llama-server (CPU) from the llama-cpp-python sdist's vendored llama.cpp,
# so `scripts/bench_serve.py --peer-llama-server PATH` compares against the same llama.cpp
# lfm2-edge runs on. Downloads nothing: get the sdist once with
#   pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/sdist
# then: scripts/build_llama_server.sh /tmp/sdist/llama_cpp_python-0.3.36.tar.gz [BUILD_DIR]
# (a .tar.gz or an unpacked directory). Prints the binary's path on its last line.
set -euo pipefail
src=${1:?usage: build_llama_server.sh SDIST(.tar.gz or dir) [BUILD_DIR]}
out=${2:-${TMPDIR:-/tmp}/llama-server-build}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
mkdir -p "$out"
if [ -f "$src" ]; then
  tar -xzf "$src" -C "$out"
  src=$(find "$out" -maxdepth 1 -type d -name 'llama_cpp_python-*' | head -n1)
fi
llama="$src/vendor/llama.cpp"
[ -f "$llama/CMakeLists.txt" ] || { echo "no vendored llama.cpp under $src" >&2; exit 1; }
# as `make install`: without ggml's AMX kernels, which segfault on quantized models (llama.cpp #20824)
if [ "$(uname -m)" = x86_64 ]; then
  export CFLAGS="${CFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16" CXXFLAGS="${CXXFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
cmake -S "$llama" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$out/build" --target llama-server -j "$jobs" >&2
echo "$out/build/bin/llama-server"
