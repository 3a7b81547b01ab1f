# lfm2-edge: `serve` (the OpenAI API) in a container. docs/deploy.md ("Containers") has the details.
#
#   docker build -t lfm2-edge .                                   # CPU, for this machine's platform
#   docker run -d -p 127.0.0.1:8000:8000 -v lfm2-hf:/data lfm2-edge serve LFM2.5-VL-450M:Q4_0 --host 0.0.0.0
#   docker buildx build --platform linux/arm64 -t lfm2-edge:arm64 .   # arm64 (Raspberry Pi 4/5, Jetson, Graviton)
#
# Build arguments:
#   BASE        the runtime image (Debian or Ubuntu, with apt): debian:bookworm-slim by default
#   BUILD_BASE  the image llama-cpp-python is compiled in; the same as BASE unless a GPU
#               toolkit lives in another one (CUDA: the -devel image, run on the -runtime one)
#   BACKEND     cpu (default), cuda or vulkan: llama.cpp's backend
#   CMAKE_EXTRA more CMake flags for llama.cpp, e.g. "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod" (Pi 5)
#               or "-DCMAKE_CUDA_ARCHITECTURES=87" (Jetson Orin)
#   JOBS        compiler jobs (default: every core of the build machine)
#
# The image is portable across CPUs of its architecture: llama.cpp is built with
# GGML_NATIVE=OFF (on x86-64 that still means AVX2, FMA and F16C: any x86-64 CPU from 2013 on).
#
# Podman/buildah: pass --format docker, or the OCI format drops HEALTHCHECK.

ARG BASE=debian:bookworm-slim
ARG BUILD_BASE=${BASE}

# ---- build: llama-cpp-python (compiled once, its own layer) and lfm2-edge into /opt/lfm2-edge
FROM ${BUILD_BASE} AS build
ARG BACKEND=cpu
ARG CMAKE_EXTRA=
ARG JOBS=
ARG LLAMA_CPP_PYTHON=0.3.36
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN set -eux; \
    case "$BACKEND" in \
        cpu|cuda) extra="" ;; \
        vulkan) extra="libvulkan-dev glslc" ;; \
        *) echo "BACKEND must be cpu, cuda or vulkan (got '$BACKEND')" >&2; exit 2 ;; \
    esac; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential cmake ninja-build ca-certificates $extra; \
    rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/lfm2-edge
# A TLS-intercepting proxy's CA bundle, if the build needs one to reach PyPI, comes in as a
# build secret (`--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt`): used, never stored.
RUN --mount=type=secret,id=pip-ca set -eux; \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    case "$BACKEND" in \
        cpu) flags="" ;; \
        cuda) flags="-DGGML_CUDA=on" ;; \
        vulkan) flags="-DGGML_VULKAN=on" ;; \
    esac; \
    CMAKE_ARGS="-DGGML_NATIVE=OFF $flags $CMAKE_EXTRA" \
    CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-$(nproc)}" \
        /opt/lfm2-edge/bin/pip install "llama-cpp-python==${LLAMA_CPP_PYTHON}"
# The source changes more often than llama.cpp: it comes after, so a rebuild reuses the layer above.
# Only llama.cpp's own libraries are stripped: the wheels' bundled ones (numpy's OpenBLAS) break.
COPY pyproject.toml README.md /src/
COPY lfm2_edge /src/lfm2_edge
RUN --mount=type=secret,id=pip-ca set -eux; \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    /opt/lfm2-edge/bin/pip install /src; \
    /opt/lfm2-edge/bin/pip uninstall -y pip; \
    strip --strip-unneeded /opt/lfm2-edge/lib/python3*/site-packages/llama_cpp/lib/*.so*; \
    find /opt/lfm2-edge -name '__pycache__' -prune -exec rm -rf {} +; \
    rm -rf /opt/lfm2-edge/lib/python3*/site-packages/llama_cpp/include

# ---- runtime: Python, the OpenMP runtime, the virtual environment; nothing to compile with
FROM ${BASE}
ARG BACKEND=cpu
ENV DEBIAN_FRONTEND=noninteractive
RUN set -eux; \
    case "$BACKEND" in \
        vulkan) extra="libvulkan1 mesa-vulkan-drivers" ;; \
        *) extra="" ;; \
    esac; \
    apt-get update; \
    apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates tini $extra; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log; \
    useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin lfm2; \
    mkdir -p /data/hub && chown -R lfm2:lfm2 /data
COPY --from=build /opt/lfm2-edge /opt/lfm2-edge
# HF_HOME=/data: the hub cache is /data/hub, in huggingface_hub's layout, so a host's
# ~/.cache/huggingface mounted at /data is shared with it.
ENV PATH=/opt/lfm2-edge/bin:$PATH \
    HF_HOME=/data \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
WORKDIR /data
USER lfm2
EXPOSE 8000
# /health answers 200 once the model is loaded (load can take a while on a Pi: start-period).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["/usr/bin/tini", "--", "lfm2-edge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
