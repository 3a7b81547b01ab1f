"""lfm2-edge's pure image code against transformers' own, in the reference venv.

    PYTHONPATH=. /work/ref-venv/bin/python scripts/reference/ref_checks.py [--n N] [--seed S]

Prints one JSON object: ``resize`` (``lfm2_edge.chat.images.resize_like_transformers``
against torchvision's ``resize(antialias=True)`` of a uint8 tensor, on N random sizes:
the sizes where a pixel differs) and ``plan`` (``lfm2_edge.prompt.vision.plan_image``
against ``Lfm2VlProcessor`` itself, on N random sizes under six settings: the sizes where
the expanded marker text or the pieces' shapes differ). Only lfm2-edge's modules that
need nothing but numpy and Pillow are imported.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvF
from transformers import Lfm2VlImageProcessor, Lfm2VlProcessor, PreTrainedTokenizerFast

from lfm2_edge.chat.images import resize_like_transformers
from lfm2_edge.prompt.vision import ImageProcessing, plan_image

SETTINGS: list[dict[str, Any]] = [
    {},
    {"min_image_tokens": 64, "max_image_tokens": 128},
    {"min_image_tokens": 32, "max_image_tokens": 256},
    {"use_thumbnail": False},
    {"max_pixels_tolerance": 1.5},
    {"min_image_tokens": 16, "max_image_tokens": 64, "do_image_splitting": False},
]


def check_resize(rng: random.Random, n: int) -> list[list[int]]:
    bad = []
    for _ in range(n):
        w, h = rng.randint(1, 1400), rng.randint(1, 1400)
        tw, th = rng.randint(32, 2048), rng.randint(32, 2048)
        a = np.random.default_rng(rng.randint(0, 2**31)).integers(0, 256, (h, w, 3), dtype=np.uint8)
        t = torch.from_numpy(a).permute(2, 0, 1)[None]
        ref = tvF.resize(t, [th, tw], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
        if not np.array_equal(resize_like_transformers(a, tw, th), ref[0].permute(1, 2, 0).numpy()):
            bad.append([w, h, tw, th])
    return bad


def _size(rng: random.Random) -> tuple[int, int]:
    kind = rng.random()
    if kind < 0.4:
        return rng.randint(1, 900), rng.randint(1, 900)
    if kind < 0.8:
        return rng.randint(500, 2600), rng.randint(300, 2000)
    w, h = rng.randint(1, 60), rng.randint(500, 4000)
    return (w, h) if rng.random() < 0.5 else (h, w)


def check_plan(rng: random.Random, n: int, tokenizer_dir: str) -> list[dict[str, Any]]:
    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    proc = Lfm2VlProcessor(image_processor=Lfm2VlImageProcessor(), tokenizer=tok)
    bad = []
    for s in SETTINGS:
        p = ImageProcessing(**s)
        for _ in range(n):
            w, h = _size(rng)
            feats = proc.image_processor(images=[[Image.new("RGB", (w, h))]], return_row_col_info=True, **s)
            text = proc.replace_image_token(feats, image_idx=0, use_image_special_tokens=True, **s)
            plan = plan_image(w, h, p)
            shapes = [tuple(x) for x in feats["spatial_shapes"].tolist()]
            mine = [(pc.height // 16, pc.width // 16) for pc in plan.pieces]
            if plan.text() != text or shapes != mine:
                bad.append({"size": [w, h], "settings": s})
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokenizer_dir", help="the reference model's hf/ folder (its tokenizer)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rng = random.Random(args.seed)
    out = {"resize": check_resize(rng, args.n), "plan": check_plan(rng, args.n, args.tokenizer_dir), "n": args.n}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
