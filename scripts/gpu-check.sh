#!/usr/bin/env bash
# One check of lfm2-edge on a fresh NVIDIA machine with nvcc and CMake and no network.
#
#   scripts/gpu-check.sh --sdist llama_cpp_python-0.3.36.tar.gz --wheels DIR [--out DIR] [--arch 90]
#
# It builds llama-cpp-python's CUDA backend for this machine's GPU only, installs it and
# lfm2-edge into a throwaway virtual environment, writes the synthetic models, runs the
# test suite with every model on the GPU (LFM2_EDGE_TEST_GPU_LAYERS=auto) and again on
# the CPU, runs `lfm2-edge bench --gpu-layers auto --json`, and leaves the logs and the
# bench JSON in --out. About 4 minutes of build on 16 cores; the whole run well under 10.
#
# --wheels holds every wheel lfm2-edge[dev] needs for this Python (no index is reached):
# on a machine with network, `scripts/gpu-wheels.sh DIR` downloads them.
set -euo pipefail

sdist="" wheels="" out="gpu-check" arch="native"
while [ $# -gt 0 ]; do
    case "$1" in
        --sdist) sdist=$2; shift 2 ;;
        --wheels) wheels=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --arch) arch=$2; shift 2 ;;  # e.g. 90 for H100/H200; "native" asks nvcc for this GPU
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -f "$sdist" ] || { echo "error: --sdist must name the llama-cpp-python 0.3.36 sdist (.tar.gz)" >&2; exit 2; }
[ -d "$wheels" ] || { echo "error: --wheels must name a folder of wheels" >&2; exit 2; }
command -v nvcc >/dev/null || { echo "error: nvcc not found: this check needs the CUDA toolkit" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/gpu-check.log"
venv=$(mktemp -d)/venv
exec > >(tee -a "$log") 2>&1
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"

python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --no-index --find-links "$wheels" --upgrade pip setuptools wheel scikit-build-core cmake ninja 2>/dev/null \
    || pip install -q --no-index --find-links "$wheels" scikit-build-core
echo "== building llama-cpp-python with CUDA for arch $arch"
start=$(date +%s)
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DGGML_NATIVE=on" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    pip install -q --no-index --find-links "$wheels" --no-build-isolation --no-cache-dir "$sdist"
echo "== built in $(( $(date +%s) - start )) s"
pip install -q --no-index --find-links "$wheels" -e "${repo}[dev]"

cd "$repo"
"$venv/bin/lfm2-edge" info --json > "$out/info.json"
grep -q '"gpu"' "$out/info.json" || echo "warning: llama.cpp registered no GPU device (see $out/info.json)"
"$venv/bin/python" -m lfm2_edge.testing --shape lfm2-vl-450m --out "$out/models" --quant Q8_0 --quant Q4_0

status=0
echo "== test suite, GPU placement"
LFM2_EDGE_TEST_GPU_LAYERS=auto "$venv/bin/pytest" -q -p no:cacheprovider --junitxml="$out/tests-gpu.xml" || status=1
echo "== test suite, CPU placement"
LFM2_EDGE_TEST_GPU_LAYERS=0 "$venv/bin/pytest" -q -p no:cacheprovider -m "not slow" --junitxml="$out/tests-cpu.xml" || status=1
echo "== bench --gpu-layers auto"
for q in F16 Q8_0 Q4_0; do
    "$venv/bin/lfm2-edge" bench "$out/models/model-$q.gguf" --mmproj "$out/models/mmproj-F16.gguf" \
        --gpu-layers auto --json > "$out/bench-$q.json" || status=1
done
echo "== done (status $status); logs and JSON in $out"
exit $status
