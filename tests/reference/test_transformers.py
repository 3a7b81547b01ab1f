"""lfm2-edge against the reference: transformers' Lfm2VlForConditionalGeneration and
Lfm2VlProcessor, on a small random LFM2-VL built in transformers and converted to GGUF by
llama.cpp's own convert_hf_to_gguf.py (F32 files), the way the published files are made.

The reference runs in its own venv (torch, torchvision, transformers 5, gguf; ``make
reference-venv``) through scripts/reference/; lfm2-edge runs here. Where that venv is not
installed every test here is skipped with one reason line. ``LFM2_REF_PYTHON``,
``LFM2_REF_CONVERTER``: another venv's python, another converter.

Checked: the rendered prompt bytes and token ids (text, one image, tiled images, two images,
text then image); the image-token count on a 600-size grid at the card's budget and at
64..128; the first token's top-20 log-probabilities (|delta| <= 0.02) and 32 greedy tokens
(at least 30 equal) on text, single-tile and tiled images; each image piece's embeddings
(cosine >= 0.9999); the resize, bit for bit, and the cut plan against the processor itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# one module-wide run of both sides (minutes: the transformers side is CPU torch)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _first(*candidates: str | Path | None) -> Path | None:
    for c in candidates:
        if c and Path(c).exists():
            return Path(c)
    return None


REF_PYTHON = _first(os.environ.get("LFM2_REF_PYTHON"), ROOT / ".ref-venv/bin/python", "/work/ref-venv/bin/python")
_SDIST = "llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py"
CONVERTER = _first(os.environ.get("LFM2_REF_CONVERTER"), ROOT / ".ref-venv/src" / _SDIST, "/work/ref-src/" + _SDIST)


def _load_compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lfm2_ref_compare", ROOT / "scripts/reference/compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


compare = _load_compare()


def _unavailable() -> str | None:
    """Why the reference cannot run here, in one line; None when it can."""
    if REF_PYTHON is None:
        return "the reference venv (torch, transformers 5) is not installed: make reference-venv"
    if CONVERTER is None:
        return "llama-cpp-python 0.3.36's convert_hf_to_gguf.py is not unpacked: make reference-venv"
    probe = "import torch, torchvision, transformers; assert transformers.__version__.split('.')[0] == '5'"
    run = subprocess.run([str(REF_PYTHON), "-c", probe], capture_output=True, text=True)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["?"])[-1]
        return f"the reference venv {REF_PYTHON} cannot import torch/torchvision/transformers 5: {last}"
    return None


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Any:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    work = Path(os.environ.get("LFM2_REF_WORK") or tmp_path_factory.mktemp("reference"))
    (work / "images").mkdir(parents=True, exist_ok=True)
    s = compare.Setup(work, str(REF_PYTHON), str(CONVERTER))
    s.build()
    return s


CASES = [
    "text",
    "text multi-turn",
    "image 400x300",
    "image 336x336",
    "image 1024x768 (tiled)",
    "image 2000x600 (tiled)",
    "text then image",
    "two images",
    "transparent png",
    "image 1024x768 at (64,128)",
    "image 400x300, repetition penalty 1.05",
    "text, repetition penalty 1.05",
]
GRID_BUDGETS = [(64, 256), (64, 128)]


@pytest.fixture(scope="module")
def runs(setup: Any) -> dict[str, Any]:
    """Both sides of every case and of the grid, once."""
    cases = [c for c in compare.build_cases(setup.work / "images", quick=False) if c.name in CASES]
    assert [c.name for c in cases] == CASES
    grid = compare.grid_spec(quick=False)
    grid["budgets"] = [list(b) for b in GRID_BUDGETS]
    ref = setup.reference(cases, grid, embeddings=True, reuse=True)
    edge = compare.Edge(*setup.files)
    rows = {c.name: compare.compare_case(edge, c, ref["cases"][c.name], setup.work / "embeddings") for c in cases}
    grid_rows = compare.compare_grid(edge, ref["grid"])
    for model in edge.models.values():
        model.close()
    return {"rows": rows, "grid": grid_rows, "ref": ref, "cases": {c.name: c for c in cases}}


@pytest.mark.parametrize("name", CASES)
def test_the_answer_is_transformers(runs: dict[str, Any], name: str) -> None:
    row = runs["rows"][name]
    assert row["prompt_equal"], "the rendered prompt differs from processor.apply_chat_template"
    assert row["ids_equal"], f"token ids differ (image tokens {row['image_tokens']})"
    assert row["top1_equal"] and row["max_delta_logprob"] <= 0.02, row
    assert row["greedy_equal"] >= 30, row
    if row.get("min_piece_cosine") is not None:
        assert row["min_piece_cosine"] >= 0.9999, row


@pytest.mark.parametrize("budget", GRID_BUDGETS, ids=lambda b: f"{b[0]}-{b[1]}")
def test_image_token_counts_on_the_grid(runs: dict[str, Any], budget: tuple[int, int]) -> None:
    rows = [g for g in runs["grid"] if tuple(g["budget"]) == budget]
    assert len(rows) == len(compare.GRID_W) * len(compare.GRID_H) == 600
    bad = [
        f"{g['size'][0]}x{g['size'][1]}: {g['n_image_tokens']} vs {g['edge']}"
        for g in rows
        if g["edge"] != g["n_image_tokens"]
    ]
    assert not bad, f"{len(bad)} of 600 sizes differ: {', '.join(bad[:8])}"


@pytest.mark.parametrize("name", ["text then image", "image 400x300, repetition penalty 1.05"])
def test_serve_answers_as_transformers(setup: Any, runs: dict[str, Any], name: str) -> None:
    # `lfm2-edge serve` in its own process: no system message the request did not send,
    # the parts in their order, the repetition penalty counted as transformers counts it
    import base64

    from tests.helpers import cli_server, post

    case, ref = runs["cases"][name], runs["ref"]["cases"][name]
    messages = []
    for m in case.messages:
        parts = []
        for part in m["content"]:
            if part["type"] == "image":
                uri = "data:image/png;base64," + base64.b64encode(Path(part["path"]).read_bytes()).decode()
                parts.append({"type": "image_url", "image_url": {"url": uri}})
            else:
                parts.append(part)
        messages.append({"role": m["role"], "content": parts})
    body = {
        "model": "m",
        "messages": messages,
        "temperature": 0,
        "max_tokens": 32,
        "repetition_penalty": case.penalty,
        "logprobs": True,
        "top_logprobs": 20,
    }
    model, mmproj = setup.files
    with cli_server({"F16": model, "mmproj": mmproj}) as (_proc, url):
        reply = post(url, body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["usage"]["prompt_tokens"] == len(ref["ids"])
    tokens = data["choices"][0]["logprobs"]["content"]
    assert compare.greedy_equal(ref["greedy_bytes"], [bytes(t["bytes"]).hex() for t in tokens]) >= 30
    top = [[alt["token"], alt["logprob"]] for alt in tokens[0]["top_logprobs"]]
    same1, delta = compare.top_delta(ref["top"], top)
    assert same1 and delta <= 0.02


def test_resize_and_plan_equal_transformers_own(setup: Any) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [str(REF_PYTHON), str(ROOT / "scripts/reference/ref_checks.py"), str(setup.model_dir / "hf"), "--n", "30"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["resize"] == [], f"pixels differ from torchvision's resize at {result['resize'][:5]}"
    assert result["plan"] == [], f"the plan differs from Lfm2VlProcessor at {result['plan'][:5]}"
