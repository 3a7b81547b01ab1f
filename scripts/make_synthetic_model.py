#!/usr/bin/env python3
"""Write a random-weight LFM2-VL GGUF pair (and quantized models) for tests and benchmarks.

python scripts/make_synthetic_model.py --shape tiny --out models/tiny
python scripts/make_synthetic_model.py --shape lfm2-vl-450m --out models/lfm2-vl-450m

The same as ``python -m lfm2_edge.testing``; the writer is :mod:`lfm2_edge.testing.synthetic`.
"""

from __future__ import annotations

import sys

from lfm2_edge.testing.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
