"""The transformers side of the comparison: what Lfm2VlProcessor and
Lfm2VlForConditionalGeneration make of each case.

Runs in the reference venv:

    /work/ref-venv/bin/python scripts/reference/ref_side.py HF_DIR CASES.json OUT.json

``CASES.json`` holds ``{"cases": [...], "grid": {...}}`` (see ``compare.py``, which writes it);
``OUT.json`` gets, per case: the rendered prompt, its token ids, the image-token count, the
first token's top-20 log-probabilities and the greedy answer's token ids; per grid entry,
the image-token count and tile grid. ``--embeddings DIR`` also writes each case's
per-tile image embeddings (the projector's output) as ``DIR/NAME.npy``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, Lfm2VlForConditionalGeneration
from transformers.image_utils import load_image


def _byte_decoder() -> dict[str, int]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class Texts:
    """A token's bytes as llama.cpp gives them (specials as their text)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.dec = _byte_decoder()
        self.special = set(tokenizer.all_special_ids) | {
            i for i, t in tokenizer.added_tokens_decoder.items() if t.special
        }

    def bytes_of(self, token_id: int) -> bytes:
        piece = self.tok.convert_ids_to_tokens(token_id)
        if token_id in self.special:
            return piece.encode()
        return bytes(self.dec[ch] for ch in piece)


def _messages(case: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """The case's messages for transformers: image parts carry the image loaded the card's
    way (``transformers.image_utils.load_image``: EXIF orientation, then RGB)."""
    out, images = [], []
    for m in case["messages"]:
        content = m["content"]
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        parts = []
        for part in content:
            if part["type"] == "image":
                img = load_image(part["path"])
                images.append(img)
                parts.append({"type": "image", "image": img})
            else:
                parts.append({"type": "text", "text": part["text"]})
        out.append({"role": m["role"], "content": parts})
    return out, images


def _image_kwargs(budget: list[int] | None) -> dict[str, Any]:
    if not budget:
        return {}
    return {"min_image_tokens": budget[0], "max_image_tokens": budget[1]}


def run_case(model: Any, processor: Any, texts: Texts, case: dict[str, Any], emb_dir: Path | None) -> dict[str, Any]:
    messages, images = _messages(case)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    kwargs = _image_kwargs(case.get("budget"))
    inputs = processor(images=[images] if images else None, text=[prompt], return_tensors="pt", **kwargs)
    ids = inputs["input_ids"][0].tolist()
    image_id = processor.image_token_id
    out: dict[str, Any] = {
        "prompt": prompt,
        "ids": ids,
        "n_image_tokens": sum(1 for t in ids if t == image_id),
    }
    if not case.get("generate", True):
        return out
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].double()
        lp = torch.log_softmax(logits, -1)
        top = lp.topk(20)
        out["top"] = [
            [int(i), float(v), texts.bytes_of(int(i)).hex()] for v, i in zip(top.values, top.indices, strict=True)
        ]
        gen = model.generate(
            **inputs,
            max_new_tokens=case.get("max_tokens", 32),
            do_sample=False,
            repetition_penalty=case.get("repetition_penalty"),
            eos_token_id=processor.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=0,
        )
        new = gen[0, len(ids) :].tolist()
        out["greedy"] = new
        out["greedy_bytes"] = [texts.bytes_of(t).hex() for t in new]
        if emb_dir is not None and images:
            feats = model.model.get_image_features(
                pixel_values=inputs["pixel_values"],
                spatial_shapes=inputs["spatial_shapes"],
                pixel_attention_mask=inputs["pixel_attention_mask"],
            )
            feats = getattr(feats, "pooler_output", feats)
            tiles = [f.reshape(-1, f.shape[-1]).float().numpy() for f in feats]
            np.save(emb_dir / f"{case['name']}.npy", np.concatenate(tiles), allow_pickle=False)
            out["tile_tokens"] = [int(t.shape[0]) for t in tiles]
    return out


def run_grid(processor: Any, grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Image-token counts and tile grids, from the processor alone (blank images)."""
    rows = []
    ip = processor.image_processor
    for budget in grid["budgets"]:
        for w, h in grid["sizes"]:
            img = Image.new("RGB", (w, h), (127, 127, 127))
            kwargs = _image_kwargs(budget)
            feats = ip(images=[[img]], return_row_col_info=True, **kwargs)
            text = processor.replace_image_token(feats, image_idx=0, use_image_special_tokens=True, **kwargs)
            rows.append(
                {
                    "size": [w, h],
                    "budget": budget,
                    "n_image_tokens": text.count(processor.image_token),
                    "grid": [int(feats["image_cols"][0]), int(feats["image_rows"][0])],
                    "resized": [int(feats["image_sizes"][0][1]), int(feats["image_sizes"][0][0])],
                    "markers": text.replace(processor.image_token, ""),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf_dir", type=Path)
    ap.add_argument("cases", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--embeddings", type=Path)
    args = ap.parse_args()
    spec = json.loads(args.cases.read_text())
    torch.set_num_threads(2)
    processor = AutoProcessor.from_pretrained(args.hf_dir)
    result: dict[str, Any] = {"cases": {}, "grid": []}
    if spec.get("cases"):
        model = Lfm2VlForConditionalGeneration.from_pretrained(args.hf_dir, dtype=torch.float32).eval()
        texts = Texts(processor.tokenizer)
        if args.embeddings:
            args.embeddings.mkdir(parents=True, exist_ok=True)
        for case in spec["cases"]:
            result["cases"][case["name"]] = run_case(model, processor, texts, case, args.embeddings)
            print(f"ref: {case['name']}", file=sys.stderr)
    if spec.get("grid"):
        result["grid"] = run_grid(processor, spec["grid"])
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
