"""lfm2-edge against transformers' LFM2-VL: prompt bytes, token ids, image-token counts,
first-token log-probabilities and greedy answers, on the same random model.

    .venv/bin/python scripts/reference/compare.py [--work DIR] [--json OUT] [--quick]

Builds the reference model once (``build_model.py`` in the reference venv, converted by the
llama-cpp-python 0.3.36 sdist's ``convert_hf_to_gguf.py``; ``--ref-python`` and
``--converter``, or ``LFM2_REF_PYTHON`` / ``LFM2_REF_CONVERTER``), writes the test images,
runs ``ref_side.py`` there and lfm2-edge here, and prints one table. F32 files throughout.
Exit status 1 when a check fails (``--no-fail`` only reports).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REF_PYTHON = os.environ.get("LFM2_REF_PYTHON", "/work/ref-venv/bin/python")
CONVERTER = os.environ.get(
    "LFM2_REF_CONVERTER", "/work/ref-src/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py"
)
CARD_BUDGET = (64, 256)
IMAGE_ID = 396
PROMPT = "What is in this image? Answer in detail."

# The 600-size grid: 24 widths x 25 heights, single-tile and tiled, many sides = 16 (mod 64)
GRID_W = (16, 48, 80, 100, 144, 200, 224, 256, 300, 336, 400, 464, 512, 528, 600, 640, 720, 724, 800, 1000, 1040, 1280, 1600, 2000)  # fmt: skip
GRID_H = (20, 64, 90, 112, 150, 208, 240, 272, 300, 336, 360, 400, 450, 496, 512, 560, 600, 656, 700, 768, 900, 1024, 1200, 1500, 1800)  # fmt: skip
GRID_BUDGETS = ((64, 256), (64, 128), (32, 256))


def make_image(path: Path, width: int, height: int, seed: int, *, alpha: bool = False) -> Path:
    """A deterministic picture with structure at every scale: gradients, rings, stripes
    and noise (resampling differences show; a flat image would hide them)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    r = 255 * u
    g = 127.5 + 127.5 * np.sin(2 * np.pi * (3 * u + 2 * v) + seed)
    ring = np.hypot(u - 0.4, v - 0.6)
    b = 127.5 + 127.5 * np.cos(40 * ring)
    rgb = np.stack([r, g, b], -1) + rng.normal(0, 18, (height, width, 3))
    stripe = (np.floor(x / 7) % 2 == 0) & (v > 0.7)
    rgb[stripe] = [250, 240, 30]
    arr = np.clip(rgb, 0, 255).astype(np.uint8)
    if alpha:
        a = np.where(ring < 0.3, 255, 0).astype(np.uint8)  # a transparent surround, its stored colour kept
        img = Image.fromarray(np.dstack([arr, a]), "RGBA")
    else:
        img = Image.fromarray(arr, "RGB")
    img.save(path)
    return path


@dataclass
class Case:
    name: str
    messages: list[dict[str, Any]]
    budget: tuple[int, int] = CARD_BUDGET
    generate: bool = True
    tiled: bool = False

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "messages": self.messages, "budget": list(self.budget), "generate": self.generate}


def _img(path: Path) -> dict[str, Any]:
    return {"type": "image", "path": str(path)}


def _txt(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def build_cases(images: Path, quick: bool) -> list[Case]:
    def im(w: int, h: int, seed: int = 0, alpha: bool = False) -> Path:
        p = images / f"img-{w}x{h}-{seed}{'-rgba' if alpha else ''}.png"
        if not p.exists():
            make_image(p, w, h, seed, alpha=alpha)
        return p

    user = lambda *parts: {"role": "user", "content": list(parts)}  # noqa: E731
    cases = [
        Case("text", [{"role": "user", "content": "Tell me about the sea and the sky."}]),
        Case(
            "text multi-turn",
            [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "And another one?"},
            ],
        ),
        Case("image 256x256", [user(_img(im(256, 256)), _txt(PROMPT))]),
        Case("image 400x300", [user(_img(im(400, 300, 1)), _txt(PROMPT))]),
        Case("image 336x336", [user(_img(im(336, 336, 2)), _txt(PROMPT))]),
        Case("image 1024x768 (tiled)", [user(_img(im(1024, 768, 3)), _txt(PROMPT))], tiled=True),
        Case("image 2000x600 (tiled)", [user(_img(im(2000, 600, 4)), _txt(PROMPT))], tiled=True),
        Case("text then image", [user(_txt(PROMPT), _img(im(400, 300, 1)))]),
        Case("two images", [user(_img(im(256, 256)), _img(im(336, 336, 2)), _txt("Compare them."))]),
        Case("transparent png", [user(_img(im(300, 200, 5, alpha=True)), _txt(PROMPT))]),
        Case("image 400x300 at (64,128)", [user(_img(im(400, 300, 1)), _txt(PROMPT))], budget=(64, 128)),
    ]
    if quick:
        cases = [c for c in cases if c.name in ("text", "image 400x300", "image 1024x768 (tiled)")]
    return cases


# -- lfm2-edge's side ------------------------------------------------------------


def _edge_messages(case: Case) -> list[dict[str, Any]]:
    out = []
    for m in case.messages:
        if isinstance(m["content"], str):
            out.append(m)
            continue
        parts = [
            {"type": "image", "image": p["path"]} if p["type"] == "image" else {"type": "text", "text": p["text"]}
            for p in m["content"]
        ]
        out.append({"role": m["role"], "content": parts})
    return out


class Edge:
    """lfm2-edge, one VisionModel per image-token budget."""

    def __init__(self, model: Path, mmproj: Path) -> None:
        self.paths = (model, mmproj)
        self.models: dict[tuple[int, int], Any] = {}

    def model(self, budget: tuple[int, int]) -> Any:
        from lfm2_edge import VisionModel

        if budget not in self.models:
            self.models[budget] = VisionModel(
                *self.paths, image_min_tokens=budget[0], image_max_tokens=budget[1], n_ctx=8192, n_threads=2
            )
        return self.models[budget]

    def prompt_and_ids(self, case: Case, *, system_prompt: str | None) -> tuple[str, list[int], int]:
        """The rendered prompt, its token ids (image positions as <image>'s id, as in
        transformers' input_ids) and the image-token count."""
        model = self.model(case.budget)
        saved = model.system_prompt
        model.system_prompt = system_prompt
        try:
            messages = _edge_messages(case)
            check = getattr(model, "check_call", None)
            chat = model.prepare(check(messages) if check else messages)
        finally:
            model.system_prompt = saved
        images = getattr(chat, "images", None)
        if images is None:
            images = chat.loaded
        with model._runtime.tokenize_prompt(chat.prompt, images) as chunks:
            ids: list[int] = []
            for i, info in enumerate(chunks.info):
                ids += [IMAGE_ID] * info.n_tokens if info.is_image else chunks.text_tokens(i)
            return str(chat.prompt), ids, chunks.n_image_tokens

    def answer(self, case: Case, **sampling: Any) -> dict[str, Any]:
        model = self.model(case.budget)
        saved = model.system_prompt
        model.system_prompt = None
        try:
            r = model.chat(
                _edge_messages(case),
                temperature=0,
                max_tokens=32,
                logprobs=20,
                **{"repetition_penalty": 1.0, **sampling},
            )
        finally:
            model.system_prompt = saved
        return {
            "top": [[t, lp] for t, lp in r.logprobs[0].top_logprobs],
            "greedy_bytes": [bytes(lp.bytes).hex() for lp in r.logprobs],
            "finish": r.finish_reason,
        }

    def count(self, size: tuple[int, int], budget: tuple[int, int]) -> int:
        from lfm2_edge.images import LoadedImage

        model = self.model(budget)
        img = Image.new("RGB", size, (127, 127, 127))
        loaded = LoadedImage.from_pil(img, max_pixels=10**9)
        with model._runtime.tokenize_prompt("<image>", [loaded]) as chunks:
            return int(chunks.n_image_tokens)


# -- comparison ------------------------------------------------------------------


def top_delta(ref_top: Sequence[Sequence[Any]], edge_top: Sequence[Sequence[Any]]) -> tuple[bool, float]:
    """(same top-1, max |delta logprob| over the tokens in both top-20 lists).

    lfm2-edge names alternatives by text (invalid UTF-8 as U+FFFD), so tokens are paired by
    text, best with best inside a group of equal texts."""
    ref_groups: dict[str, list[float]] = {}
    for _id, lp, hexbytes in ref_top:
        ref_groups.setdefault(bytes.fromhex(hexbytes).decode("utf-8", "replace"), []).append(lp)
    edge_groups: dict[str, list[float]] = {}
    for text, lp in edge_top:
        edge_groups.setdefault(text, []).append(lp)
    worst = 0.0
    for text, lps in ref_groups.items():
        for a, b in zip(sorted(lps, reverse=True), sorted(edge_groups.get(text, []), reverse=True)):
            worst = max(worst, abs(a - b))
    ref1 = bytes.fromhex(ref_top[0][2]).decode("utf-8", "replace")
    return ref1 == edge_top[0][0], worst


def greedy_equal(ref: Sequence[str], edge: Sequence[str]) -> int:
    n = 0
    for a, b in zip(ref, edge):
        if a != b:
            break
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("LFM2_REF_WORK", "/tmp/lfm2-reference")))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="3 cases and a 100-size grid")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--no-fail", action="store_true")
    ap.add_argument("--ref-python", default=REF_PYTHON)
    ap.add_argument("--converter", default=CONVERTER)
    args = ap.parse_args()

    work: Path = args.work
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    gguf, mmproj = model_dir / "model-F32.gguf", model_dir / "mmproj-F32.gguf"
    if not (gguf.exists() and mmproj.exists()):
        print("building the reference model (transformers, then convert_hf_to_gguf.py)...", file=sys.stderr)
        subprocess.run(
            [args.ref_python, str(HERE / "build_model.py"), str(model_dir), "--converter", args.converter],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    cases = build_cases(images, args.quick)
    sizes = [(w, h) for w in GRID_W for h in GRID_H]
    if args.quick:
        sizes = sizes[::6]
    grid = None if args.no_grid else {"sizes": sizes, "budgets": [list(b) for b in GRID_BUDGETS]}
    spec = {"cases": [c.spec() for c in cases], "grid": grid}
    (work / "cases.json").write_text(json.dumps(spec))
    print("running transformers...", file=sys.stderr)
    subprocess.run(
        [args.ref_python, str(HERE / "ref_side.py"), str(model_dir / "hf"), str(work / "cases.json"), str(work / "ref.json")],
        check=True,
    )
    ref = json.loads((work / "ref.json").read_text())

    edge = Edge(gguf, mmproj)
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for case in cases:
        r = ref["cases"][case.name]
        prompt, ids, n_img = edge.prompt_and_ids(case, system_prompt=None)
        default_prompt, _, _ = edge.prompt_and_ids(case, system_prompt=edge.model(case.budget).system_prompt)
        row: dict[str, Any] = {
            "case": case.name,
            "budget": list(case.budget),
            "prompt_equal": prompt == r["prompt"],
            "prompt_equal_default_system": default_prompt == r["prompt"],
            "ids_equal": ids == r["ids"],
            "image_tokens": [r["n_image_tokens"], n_img],
        }
        if case.generate:
            e = edge.answer(case)
            same1, delta = top_delta(r["top"], e["top"])
            row.update(
                top1_equal=same1,
                max_delta_logprob=round(delta, 4),
                greedy_equal=greedy_equal(r["greedy_bytes"], e["greedy_bytes"]),
                greedy_len=len(r["greedy_bytes"]),
            )
            if not (same1 and delta <= 0.02 and row["greedy_equal"] >= 30):
                failures.append(f"{case.name}: top-1 {same1}, |d logprob| {delta:.3f}, greedy {row['greedy_equal']}/32")
        if not row["ids_equal"]:
            failures.append(f"{case.name}: token ids differ")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    grid_rows = []
    if grid:
        for g in ref["grid"]:
            size, budget = tuple(g["size"]), tuple(g["budget"])
            if max(size) / min(size) > 32:
                continue
            n = edge.count(size, budget)
            grid_rows.append({**g, "edge": n})
        for budget in GRID_BUDGETS:
            sel = [g for g in grid_rows if tuple(g["budget"]) == budget]
            bad = [g for g in sel if g["edge"] != g["n_image_tokens"]]
            print(f"grid {budget}: {len(sel) - len(bad)}/{len(sel)} equal", file=sys.stderr)
            if bad:
                failures.append(f"grid {budget}: {len(bad)} of {len(sel)} sizes differ, e.g. {_few(bad)}")

    report = {"cases": rows, "grid": grid_rows, "failures": failures}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(_table(rows, grid_rows))
    for f in failures:
        print("FAIL", f)
    return 1 if failures and not args.no_fail else 0


def _few(bad: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"{g['size'][0]}x{g['size'][1]}: {g['n_image_tokens']} vs {g['edge']}" for g in bad[:4])


def _table(rows: Sequence[dict[str, Any]], grid_rows: Sequence[dict[str, Any]]) -> str:
    head = "| case | prompt bytes | token ids | image tokens (tf / edge) | top-1 | max abs d logprob (top-20) | greedy equal |"
    lines = [head, "|" + " --- |" * 7]
    for r in rows:
        greedy = f"{r['greedy_equal']}/{r['greedy_len']}" if "greedy_equal" in r else ""
        top1 = ("same" if r["top1_equal"] else "differs") if "top1_equal" in r else ""
        delta = f"{r['max_delta_logprob']:.4f}" if "max_delta_logprob" in r else ""
        lines.append(
            f"| {r['case']} | {'equal' if r['prompt_equal'] else 'differ'} | {'equal' if r['ids_equal'] else 'differ'}"
            f" | {r['image_tokens'][0]} / {r['image_tokens'][1]} | {top1} | {delta} | {greedy} |"
        )
    if grid_rows:
        lines.append("")
        for budget in GRID_BUDGETS:
            sel = [g for g in grid_rows if tuple(g["budget"]) == budget]
            bad = [g for g in sel if g["edge"] != g["n_image_tokens"]]
            lines.append(f"- image-token counts at {budget}: {len(sel) - len(bad)} of {len(sel)} sizes equal")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
