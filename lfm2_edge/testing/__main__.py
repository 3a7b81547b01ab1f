"""Write a random-weight LFM2-VL GGUF pair (and quantized models) for tests and benchmarks.

python -m lfm2_edge.testing --shape tiny --out models/tiny
python -m lfm2_edge.testing --shape lfm2-vl-450m --out models/lfm2-vl-450m
"""

from __future__ import annotations

import argparse
import sys

from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.testing.synthetic import SHAPES, make_synthetic_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lfm2_edge.testing", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--out", required=True, help="directory to write the GGUF files into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quant", action="append", dest="quants", help="quantize to this type too (repeatable)")
    args = parser.parse_args(argv)
    try:
        paths = make_synthetic_model(args.out, args.shape, seed=args.seed, quants=args.quants)
    except Lfm2EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
