"""Image encode time of two lfm2-edge checkouts, side by side in one run.

    .venv/bin/python scripts/bench_encode.py --base /path/to/other/checkout --model M.gguf --mmproj P.gguf

Each side runs in a child process of its own (``PYTHONPATH`` = its checkout), alternately
(base, new, base, new, ...), so that a busy machine slows both alike. Each run is one chat
with a new image and a one-token answer: ``first_token_ms`` (everything: decoding the
image, cutting it, tokenizing, the vision encoder, the prompt) and ``image_ms`` (the image
chunks' encode and decode alone). Prints JSON with the medians and the new/base ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SIZES = ((512, 512), (1024, 768), (4032, 3024))

CHILD = r"""
import json, sys
import numpy as np
from PIL import Image
from lfm2_edge import VisionModel
model, mmproj, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
sizes = json.loads(sys.argv[4])
vm = VisionModel(model, mmproj, n_threads=2, n_ctx=8192, embedding_cache_mb=0)
vm.chat("hi", max_tokens=1, temperature=0)  # warm up
out = []
for w, h in sizes:
    rng = np.random.default_rng(seed * 1000 + w)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    r = vm.chat("hi", images=[img], max_tokens=1, temperature=0)
    out.append({"size": [w, h], "first_token_ms": r.timings.first_token_ms, "image_ms": r.timings.image_ms,
                "image_tokens": r.usage.image_tokens})
vm.close()
print(json.dumps(out))
"""


def run_side(checkout: Path, args: argparse.Namespace, seed: int) -> list[dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-c", CHILD, str(args.model), str(args.mmproj), str(seed), json.dumps(SIZES)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (today's code)")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--mmproj", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[list[dict[str, float]]]] = {"base": [], "new": []}
    for r in range(args.repeat):
        for side in ("base", "new"):
            runs[side].append(run_side(args.base if side == "base" else args.new, args, seed=r))
            print(f"{side} run {r + 1}: {[round(x['first_token_ms']) for x in runs[side][-1]]}", file=sys.stderr)
    report = []
    for i, (w, h) in enumerate(SIZES):
        row: dict[str, object] = {"size": f"{w}x{h}"}
        for side in ("base", "new"):
            row[f"{side}_first_token_ms"] = round(statistics.median(run[i]["first_token_ms"] for run in runs[side]))
            row[f"{side}_image_ms"] = round(statistics.median(run[i]["image_ms"] for run in runs[side]))
            row[f"{side}_image_tokens"] = runs[side][0][i]["image_tokens"]
        row["ratio_first_token"] = round(float(row["new_first_token_ms"]) / float(row["base_first_token_ms"]), 3)  # type: ignore[arg-type]
        row["ratio_image"] = round(float(row["new_image_ms"]) / float(row["base_image_ms"]), 3)  # type: ignore[arg-type]
        report.append(row)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
