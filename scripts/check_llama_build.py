"""Exit 1 with one line when the installed llama.cpp libraries would crash on this CPU.

    .venv/bin/python scripts/check_llama_build.py

``make install`` runs it after ``pip install``: pip's wheel cache keeps the first
llama-cpp-python it built and reuses it whatever the build flags now are, so a wheel built
before ``make install`` turned ggml's AMX kernels off (or one built on another CPU) comes
back on every fresh clone. On exit 1 the Makefile drops that wheel from the cache and builds
it again. The check is :func:`lfm2_edge._llama.cpu.require`, the one lfm2-edge runs before
llama.cpp loads a model; it only loads the libraries (no model, nothing computed).
"""

from __future__ import annotations

import sys

from lfm2_edge._llama import cpu
from lfm2_edge.errors import CpuMismatchError


def main() -> int:
    try:
        cpu.require()
    except CpuMismatchError as e:
        print(f"check_llama_build: {e}", file=sys.stderr)
        return 1
    built = " ".join(cpu.build_features()) or "the baseline"
    print(f"check_llama_build: llama.cpp's libraries fit this CPU (built for {built})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
