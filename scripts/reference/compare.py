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

LONG_TEXT = " ".join(
    ("the sea", "a red sky", "seven boats", "over the hills", "and far away", "quiet rain")[i * 7 % 6]
    for i in range(450)
)

# The 600-size grid: 24 widths x 25 heights, single-tile and tiled, many sides = 16 (mod 64)
GRID_W = (
    16, 48, 80, 100, 144, 200, 224, 256, 300, 336, 400, 464,
    512, 528, 600, 640, 720, 724, 800, 1000, 1040, 1280, 1600, 2000,
)  # fmt: skip
GRID_H = (
    20, 64, 90, 112, 150, 208, 240, 272, 300, 336, 360, 400, 450,
    496, 512, 560, 600, 656, 700, 768, 900, 1024, 1200, 1500, 1800,
)  # fmt: skip
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
    penalty: float = 1.0  # repetition penalty, on both sides

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "messages": self.messages,
            "budget": list(self.budget),
            "generate": self.generate,
            "repetition_penalty": self.penalty if self.penalty != 1.0 else None,
        }


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
        Case("image 1024x768 at (64,128)", [user(_img(im(1024, 768, 3)), _txt(PROMPT))], budget=(64, 128)),
        Case("image 400x300, repetition penalty 1.05", [user(_img(im(400, 300, 1)), _txt(PROMPT))], penalty=1.05),
        Case("text, repetition penalty 1.05", [{"role": "user", "content": "Say it again and again."}], penalty=1.05),
        # a strong penalty shows what it counts: the prompt too (transformers, vLLM) or not
        Case("text, repetition penalty 1.5", [{"role": "user", "content": "Say it again and again."}], penalty=1.5),
        # the language model alone at a tiled image's length: its own float32 drift there
        Case("text of 1,800 tokens", [{"role": "user", "content": LONG_TEXT}]),
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

    def answer(self, case: Case) -> dict[str, Any]:
        model = self.model(case.budget)
        saved = model.system_prompt
        model.system_prompt = None
        try:
            r = model.chat(
                _edge_messages(case), temperature=0, max_tokens=32, logprobs=20, repetition_penalty=case.penalty
            )
        finally:
            model.system_prompt = saved
        return {
            "top": [[t, lp] for t, lp in r.logprobs[0].top_logprobs],
            "greedy_bytes": [bytes(lp.bytes).hex() for lp in r.logprobs],
            "finish": r.finish_reason,
        }

    def embeddings(self, case: Case) -> list[np.ndarray]:
        """Each image piece's embeddings (the projector's output), encoded by mtmd."""
        import ctypes

        import llama_cpp.mtmd_cpp as mtmd

        model = self.model(case.budget)
        saved = model.system_prompt
        model.system_prompt = None
        try:
            messages = _edge_messages(case)
            check = getattr(model, "check_call", None)
            chat = model.prepare(check(messages) if check else messages)
        finally:
            model.system_prompt = saved
        rt = model._runtime
        proj = rt.projector
        out = []
        with model.engine.lock, rt.tokenize_prompt(chat.prompt, chat.images) as chunks:
            for i, info in enumerate(chunks.info):
                if not info.is_image:
                    continue
                if mtmd.mtmd_encode_chunk(proj.handle, chunks.chunk(i)) != 0:
                    raise RuntimeError("mtmd could not encode a piece")
                n = info.n_tokens * proj.n_embd
                ptr = mtmd.mtmd_get_output_embd(proj.handle)
                buf = (ctypes.c_float * n)()
                ctypes.memmove(buf, ptr, n * 4)
                out.append(np.frombuffer(buf, dtype=np.float32).reshape(info.n_tokens, proj.n_embd).copy())
        return out

    def count(self, size: tuple[int, int], budget: tuple[int, int]) -> int:
        from lfm2_edge.chat.images import LoadedImage

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
    floor = min(lp for _, lp in edge_top)  # a token missing from lfm2-edge's list is below this
    for text, lps in ref_groups.items():
        theirs = sorted(lps, reverse=True)
        ours = sorted(edge_groups.get(text, []), reverse=True)
        for i, a in enumerate(theirs):
            worst = max(worst, abs(a - ours[i]) if i < len(ours) else a - floor)
    ref1 = bytes.fromhex(ref_top[0][2]).decode("utf-8", "replace")
    return ref1 == edge_top[0][0], worst


def greedy_equal(ref: Sequence[str], edge: Sequence[str]) -> int:
    n = 0
    for a, b in zip(ref, edge, strict=False):
        if a != b:
            break
        n += 1
    return n


@dataclass
class Setup:
    """Where the comparison runs: the reference venv's python, the converter, a work folder."""

    work: Path
    ref_python: str = REF_PYTHON
    converter: str = CONVERTER

    @property
    def model_dir(self) -> Path:
        return self.work / "model"

    @property
    def files(self) -> tuple[Path, Path]:
        return self.model_dir / "model-F32.gguf", self.model_dir / "mmproj-F32.gguf"

    def build(self) -> None:
        """The reference model, once: built in transformers, converted by llama.cpp's converter."""
        if all(p.exists() for p in self.files):
            return
        print("building the reference model (transformers, then convert_hf_to_gguf.py)...", file=sys.stderr)
        subprocess.run(
            [self.ref_python, str(HERE / "build_model.py"), str(self.model_dir), "--converter", self.converter],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def reference(
        self, cases: Sequence[Case], grid: dict[str, Any] | None, *, embeddings: bool, reuse: bool = False
    ) -> dict[str, Any]:
        """transformers' side (ref_side.py in the reference venv); ``reuse``: the last
        answer, when it was for the same cases and grid."""
        spec = {"cases": [c.spec() for c in cases], "grid": grid}
        last, out = self.work / "cases.json", self.work / "ref.json"
        if reuse and out.exists() and last.exists() and json.loads(last.read_text()) == json.loads(json.dumps(spec)):
            return dict(json.loads(out.read_text()))
        (self.work / "cases.json").write_text(json.dumps(spec))
        cmd = [self.ref_python, str(HERE / "ref_side.py"), str(self.model_dir / "hf")]
        cmd += [str(self.work / "cases.json"), str(self.work / "ref.json")]
        if embeddings:
            cmd += ["--embeddings", str(self.work / "embeddings")]
        subprocess.run(cmd, check=True)
        return dict(json.loads((self.work / "ref.json").read_text()))


def grid_spec(quick: bool) -> dict[str, Any]:
    sizes = [(w, h) for w in GRID_W for h in GRID_H]
    if quick:
        sizes = sizes[::6]
    return {"sizes": sizes, "budgets": [list(b) for b in GRID_BUDGETS]}


def compare_case(edge: Edge, case: Case, ref: dict[str, Any], emb_dir: Path | None) -> dict[str, Any]:
    """One case, both sides: the row of the table (and its failures under "fail")."""
    prompt, ids, n_img = edge.prompt_and_ids(case, system_prompt=None)
    default_prompt, _, _ = edge.prompt_and_ids(case, system_prompt=edge.model(case.budget).system_prompt)
    row: dict[str, Any] = {
        "case": case.name,
        "budget": list(case.budget),
        "prompt_equal": prompt == ref["prompt"],
        "prompt_equal_default_system": default_prompt == ref["prompt"],
        "ids_equal": ids == ref["ids"],
        "image_tokens": [ref["n_image_tokens"], n_img],
    }
    fail = []
    if not row["prompt_equal"]:
        fail.append("prompt bytes differ")
    if not row["ids_equal"]:
        fail.append("token ids differ")
    if case.generate:
        e = edge.answer(case)
        same1, delta = top_delta(ref["top"], e["top"])
        row.update(
            top1_equal=same1,
            max_delta_logprob=round(delta, 4),
            greedy_equal=greedy_equal(ref["greedy_bytes"], e["greedy_bytes"]),
            greedy_len=len(ref["greedy_bytes"]),
        )
        if not (same1 and delta <= 0.02 and row["greedy_equal"] >= 30):
            fail.append(f"top-1 {same1}, |d logprob| {delta:.3f}, greedy {row['greedy_equal']}/32")
    if emb_dir is not None and (emb_dir / f"{case.name}.npy").exists() and "tile_tokens" in ref:
        ours = edge.embeddings(case)
        theirs = np.load(emb_dir / f"{case.name}.npy")
        cos = []
        at = 0
        for n, mine in zip(ref["tile_tokens"], ours, strict=False):
            a, b = theirs[at : at + n].astype(np.float64).ravel(), mine.astype(np.float64).ravel()
            at += n
            cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if a.shape == b.shape else 0.0)
        if len(ours) != len(ref["tile_tokens"]):
            cos.append(0.0)
        row["min_piece_cosine"] = round(min(cos), 8) if cos else None
        if cos and min(cos) < 0.9999:
            fail.append(f"piece embeddings: cosine {min(cos):.5f}")
    row["fail"] = fail
    return row


def compare_grid(edge: Edge, ref_grid: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for g in ref_grid:
        size, budget = tuple(g["size"]), tuple(g["budget"])
        try:
            n: int | str = edge.count(size, budget)
        except Exception as exc:  # a refusal is a difference too
            n = f"{type(exc).__name__}: {exc}"
        rows.append({**g, "edge": n})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("LFM2_REF_WORK", "/tmp/lfm2-reference")))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="3 cases and a 100-size grid")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--no-fail", action="store_true")
    ap.add_argument("--reuse-ref", action="store_true", help="transformers' last answer, if for the same cases")
    ap.add_argument("--ref-python", default=REF_PYTHON)
    ap.add_argument("--converter", default=CONVERTER)
    args = ap.parse_args()

    setup = Setup(args.work, args.ref_python, args.converter)
    (setup.work / "images").mkdir(parents=True, exist_ok=True)
    setup.build()
    cases = build_cases(setup.work / "images", args.quick)
    grid = None if args.no_grid else grid_spec(args.quick)
    print("running transformers...", file=sys.stderr)
    ref = setup.reference(cases, grid, embeddings=True, reuse=args.reuse_ref)

    edge = Edge(*setup.files)
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for case in cases:
        row = compare_case(edge, case, ref["cases"][case.name], setup.work / "embeddings")
        failures += [f"{case.name}: {f}" for f in row["fail"]]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    grid_rows = compare_grid(edge, ref["grid"]) if grid else []
    for budget in GRID_BUDGETS:
        sel = [g for g in grid_rows if tuple(g["budget"]) == budget]
        bad = [g for g in sel if g["edge"] != g["n_image_tokens"]]
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
    head = (
        "| case | prompt bytes | token ids | image tokens (tf / edge) | top-1 | max abs d logprob (top-20) "
        "| greedy equal | min piece cosine |"
    )
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        greedy = f"{r['greedy_equal']}/{r['greedy_len']}" if "greedy_equal" in r else ""
        top1 = ("same" if r["top1_equal"] else "differs") if "top1_equal" in r else ""
        delta = f"{r['max_delta_logprob']:.4f}" if "max_delta_logprob" in r else ""
        cos = f"{r['min_piece_cosine']:.7f}" if r.get("min_piece_cosine") is not None else ""
        lines.append(
            f"| {r['case']} | {'equal' if r['prompt_equal'] else 'differ'} | {'equal' if r['ids_equal'] else 'differ'}"
            f" | {r['image_tokens'][0]} / {r['image_tokens'][1]} | {top1} | {delta} | {greedy} | {cos} |"
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
