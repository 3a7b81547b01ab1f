#!/usr/bin/env bash
# Download the wheels scripts/gpu-check.sh needs on a machine without network:
# lfm2-edge[dev]'s dependencies and the build tools, for CPython 3.12 on x86-64 Linux
# (override with PYVER=3.11 etc.), and the llama-cpp-python sdist.
#
#   scripts/gpu-wheels.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/gpu-wheels.sh DIR}
pyver=${PYVER:-3.12}
mkdir -p "$dir"
repo=$(cd "$(dirname "$0")/.." && pwd)
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# the project's requirements, read from pyproject.toml, minus llama-cpp-python (built from the sdist)
reqs=$(python3 - "$repo/pyproject.toml" <<'EOF'
import sys, tomllib
data = tomllib.load(open(sys.argv[1], "rb"))["project"]
for req in data["dependencies"] + data["optional-dependencies"]["dev"]:
    if not req.startswith("llama-cpp-python"):
        print(req)
EOF
)
# shellcheck disable=SC2086
python3 -m pip download -q -d "$dir" --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" $reqs scikit-build-core cmake ninja setuptools wheel pip diskcache jinja2 typing-extensions
python3 -m pip download -q -d "$dir" --no-deps --no-binary :all: llama-cpp-python==0.3.36
find "$dir" -type f | wc -l
