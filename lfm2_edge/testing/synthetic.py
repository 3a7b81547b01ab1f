"""Random-weight LFM2-VL GGUF pairs that the real llama.cpp loads and runs.

The Hugging Face hub is out of reach in tests and CI, so the project writes its own
models: a language model of arch ``lfm2`` (gated short-convolution layers interleaved
with grouped-query attention) and a vision projector of type ``lfm2`` (a SigLIP2-style
ViT, pixel unshuffle by 2, a 2-layer MLP). The tensor names, shapes and metadata keys
follow llama.cpp's own converter for LFM2 / LFM2-VL, so the files exercise the same
loader and graph code paths as the official GGUFs.

Weights are drawn with a std of ``1/sqrt(fan_in)``. With the usual ``normal(0, 0.02)``
the tiny model answers ``"\\n"`` whatever it is asked, which would make every output
test blind; the wider init makes its greedy answer depend on the image and the text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lfm2_edge._llama import log as _log  # noqa: F401  (the quantizer's log goes where llama.cpp's does)
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.hub.catalog import find_entry
from lfm2_edge.prompt.tokens import BOS, EOS, PAD, SPECIAL_TOKENS
from lfm2_edge.testing.templates import CHAT_TEMPLATE, LFM2_TOOLS_TEMPLATE, LFM2_VL_TEMPLATE
from lfm2_edge.testing.vocab import build_vocab

__all__ = [
    "CHAT_TEMPLATE",
    "LAYOUTS",
    "LFM2_TOOLS_TEMPLATE",
    "LFM2_VL_TEMPLATE",
    "SHAPES",
    "SPECIAL_TOKENS",
    "LmShape",
    "SyntheticShape",
    "VisionShape",
    "build_vocab",
    "make_synthetic_model",
    "quantize",
]

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = BOS, EOS, PAD


@dataclass(frozen=True)
class LmShape:
    """Dimensions of the LFM2 language model."""

    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    layer_types: tuple[str, ...]  # "conv" or "attn", one per block
    n_vocab: int
    n_ctx_train: int
    conv_l_cache: int = 3
    real_ids: bool = False  # special tokens at the official ids (bos 1, eos 7, pad 0, <image> 396)


@dataclass(frozen=True)
class VisionShape:
    """Dimensions of the SigLIP2-style vision tower and the LFM2 projector."""

    n_embd: int
    n_ff: int
    n_head: int
    n_layer: int
    patch_size: int = 16
    n_pos_per_side: int = 16  # learned position grid, resized to the image by llama.cpp
    scale_factor: int = 2  # pixel unshuffle
    proj_hidden: int = 2560
    input_norm: bool = True  # mm.input_norm.*: LFM2-VL files have it, LFM2.5-VL files do not
    quant: str = "F16"  # the mmproj's file type: F16, or Q8_0 as the converter writes it


@dataclass(frozen=True)
class SyntheticShape:
    name: str
    lm: LmShape
    vision: VisionShape
    quants: tuple[str, ...] = field(default=())
    chat_template: str | None = None  # None: the project's own CHAT_TEMPLATE
    add_bos: bool = True  # tokenizer.ggml.add_bos_token


# LFM2-350M: attention at blocks 2, 5, 8, 10, 12, 14; the other ten are short convolutions.
_LFM2_350M_LAYERS = tuple("attn" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16))


def _catalog_shape(name: str, n_head: int, n_ff: int, vision: VisionShape) -> SyntheticShape:
    """A shape with the catalog's published dimensions for ``name`` (the rest given)."""
    entry = find_entry(name)
    assert entry is not None and entry.arch is not None, name
    arch = entry.arch
    assert (len(_LFM2_350M_LAYERS), _LFM2_350M_LAYERS.count("attn")) == (arch.n_layer, arch.n_attn), name
    lm = LmShape(
        n_embd=arch.n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=arch.kv_dim // (arch.n_embd // n_head),
        layer_types=_LFM2_350M_LAYERS,
        n_vocab=arch.n_vocab,
        n_ctx_train=32768,
    )
    vision = replace(vision, n_ff=arch.vision_ff, patch_size=arch.vision_patch)
    return SyntheticShape(name=name.lower(), lm=lm, vision=vision, quants=("Q8_0", "Q4_0"))


SHAPES: dict[str, SyntheticShape] = {
    "tiny": SyntheticShape(
        name="tiny",
        lm=LmShape(
            n_embd=64,
            n_ff=128,
            n_head=4,
            n_head_kv=2,
            layer_types=("conv", "conv", "attn", "conv", "attn", "conv"),
            n_vocab=1024,
            n_ctx_train=8192,
        ),
        vision=VisionShape(n_embd=64, n_ff=128, n_head=4, n_layer=2, proj_hidden=128),
    ),
    # the LFM2-VL-450M card's shapes, from the catalog
    "lfm2-vl-450m": _catalog_shape(
        "LFM2-VL-450M", n_head=16, n_ff=4608, vision=VisionShape(n_embd=768, n_ff=0, n_head=12, n_layer=12)
    ),
}

# The official files' layout at small width: the real 16-block pattern and head_count_kv
# array [0,0,8,0,0,8,0,0,8,0,8,0,8,0,8,0], the official special-token ids, tied output
# (no output.weight, final norm token_embd_norm.weight), context 128000, and n_embd 256
# so that llama.cpp's Q4_0 keeps token_embd in Q6_K as in the official Q4_0 files.
_OFFICIAL_LM = LmShape(
    n_embd=256,
    n_ff=256,
    n_head=16,
    n_head_kv=8,
    layer_types=_LFM2_350M_LAYERS,
    n_vocab=1024,
    n_ctx_train=128000,
    real_ids=True,
)

# One shape per official layout (``LAYOUTS``); each writes a few MB (the 1.6B tower ~27).
LAYOUTS: dict[str, SyntheticShape] = {
    # LFM2-VL: F16 projector with mm.input_norm, the published 434-byte template
    "lfm2-vl": SyntheticShape(
        name="lfm2-vl",
        lm=_OFFICIAL_LM,
        vision=VisionShape(n_embd=64, n_ff=128, n_head=4, n_layer=2, proj_hidden=160),
        quants=("Q4_0",),
        chat_template=LFM2_VL_TEMPLATE,
    ),
    # LFM2.5-VL: Q8_0 projector without mm.input_norm, a newer (tool-aware) template
    "lfm2.5-vl": SyntheticShape(
        name="lfm2.5-vl",
        lm=_OFFICIAL_LM,
        vision=VisionShape(n_embd=64, n_ff=128, n_head=4, n_layer=2, proj_hidden=128, input_norm=False, quant="Q8_0"),
        quants=("Q4_0",),
        chat_template=LFM2_TOOLS_TEMPLATE,
    ),
    # The 1.6B vision tower's widths (1152 dims, 16 heads, ff 4304: not a multiple of 32)
    # on one block, in Q8_0 as the converter types it: F32 patch embedding, F16 ffn_down.
    "lfm2.5-vl-1.6b-tower": SyntheticShape(
        name="lfm2.5-vl-1.6b-tower",
        lm=_OFFICIAL_LM,
        vision=VisionShape(
            n_embd=1152, n_ff=4304, n_head=16, n_layer=1, proj_hidden=256, input_norm=False, quant="Q8_0"
        ),
        quants=("Q4_0",),
        chat_template=LFM2_TOOLS_TEMPLATE,
    ),
}
SHAPES.update(LAYOUTS)


class _Init:
    """Seeded weight factory: ``std = gain / sqrt(fan_in)``, F16 matrices, F32 vectors."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def matrix(self, rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        w = self.rng.standard_normal((rows, cols), dtype=np.float32)
        w *= gain / np.sqrt(cols)
        return w.astype(np.float16)

    def vector(self, n: int, scale: float = 0.02) -> np.ndarray:
        return (self.rng.standard_normal(n, dtype=np.float32) * scale).astype(np.float32)

    @staticmethod
    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)


def _lm_tensors(lm: LmShape, init: _Init) -> Iterable[tuple[str, np.ndarray]]:
    head_dim = lm.n_embd // lm.n_head
    # Embeddings are tied to the output head, as in LFM2 (no output.weight).
    # std 0.1: small next to the blocks' outputs, so the answer follows the whole context.
    yield "token_embd.weight", init.matrix(lm.n_vocab, lm.n_embd, gain=0.1 * float(np.sqrt(lm.n_embd)))
    yield "token_embd_norm.weight", init.ones(lm.n_embd)
    for i, kind in enumerate(lm.layer_types):
        p = f"blk.{i}"
        yield f"{p}.attn_norm.weight", init.ones(lm.n_embd)
        if kind == "attn":
            yield f"{p}.attn_q.weight", init.matrix(lm.n_embd, lm.n_embd)
            yield f"{p}.attn_k.weight", init.matrix(lm.n_head_kv * head_dim, lm.n_embd)
            yield f"{p}.attn_v.weight", init.matrix(lm.n_head_kv * head_dim, lm.n_embd)
            yield f"{p}.attn_output.weight", init.matrix(lm.n_embd, lm.n_embd)
            yield f"{p}.attn_q_norm.weight", init.ones(head_dim)
            yield f"{p}.attn_k_norm.weight", init.ones(head_dim)
        else:
            # ggml_ssm_conv wants the kernel as {l_cache, n_embd}: numpy (n_embd, l_cache), F32.
            conv = init.rng.standard_normal((lm.n_embd, lm.conv_l_cache), dtype=np.float32)
            yield f"{p}.shortconv.conv.weight", (conv / np.sqrt(lm.conv_l_cache)).astype(np.float32)
            yield f"{p}.shortconv.in_proj.weight", init.matrix(3 * lm.n_embd, lm.n_embd)
            yield f"{p}.shortconv.out_proj.weight", init.matrix(lm.n_embd, lm.n_embd)
        yield f"{p}.ffn_norm.weight", init.ones(lm.n_embd)
        yield f"{p}.ffn_gate.weight", init.matrix(lm.n_ff, lm.n_embd)
        yield f"{p}.ffn_up.weight", init.matrix(lm.n_ff, lm.n_embd)
        yield f"{p}.ffn_down.weight", init.matrix(lm.n_embd, lm.n_ff)


def _vision_tensors(v: VisionShape, n_embd_text: int, init: _Init) -> Iterable[tuple[str, np.ndarray]]:
    patch = init.rng.standard_normal((v.n_embd, 3, v.patch_size, v.patch_size), dtype=np.float32)
    yield "v.patch_embd.weight", (patch / np.sqrt(3 * v.patch_size**2)).astype(np.float16)
    yield "v.patch_embd.bias", init.vector(v.n_embd)
    n_pos = v.n_pos_per_side**2
    yield "v.position_embd.weight", init.rng.standard_normal((n_pos, v.n_embd), dtype=np.float32)
    for i in range(v.n_layer):
        p = f"v.blk.{i}"
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            yield f"{p}.{proj}.weight", init.matrix(v.n_embd, v.n_embd)
            yield f"{p}.{proj}.bias", init.vector(v.n_embd)
        yield f"{p}.ln1.weight", init.ones(v.n_embd)
        yield f"{p}.ln1.bias", init.vector(v.n_embd)
        yield f"{p}.ln2.weight", init.ones(v.n_embd)
        yield f"{p}.ln2.bias", init.vector(v.n_embd)
        yield f"{p}.ffn_up.weight", init.matrix(v.n_ff, v.n_embd)
        yield f"{p}.ffn_up.bias", init.vector(v.n_ff)
        yield f"{p}.ffn_down.weight", init.matrix(v.n_embd, v.n_ff)
        yield f"{p}.ffn_down.bias", init.vector(v.n_embd)
    yield "v.post_ln.weight", init.ones(v.n_embd)
    yield "v.post_ln.bias", init.vector(v.n_embd)
    merged = v.n_embd * v.scale_factor**2
    if v.input_norm:
        yield "mm.input_norm.weight", init.ones(merged)
        yield "mm.input_norm.bias", init.vector(merged)
    yield "mm.1.weight", init.matrix(v.proj_hidden, merged)
    yield "mm.1.bias", init.vector(v.proj_hidden)
    yield "mm.2.weight", init.matrix(n_embd_text, v.proj_hidden)
    yield "mm.2.bias", init.vector(n_embd_text)


def _write_atomic(path: Path, arch: str, writer_fill: object) -> None:
    """Write a GGUF next to ``path`` and rename it into place, so a crash never leaves
    a half-written model where a complete one is expected."""
    import gguf

    tmp = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    try:
        writer_fill(writer)  # type: ignore[operator]
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fill_lm(shape: SyntheticShape, seed: int):
    lm = shape.lm

    def fill(w) -> None:
        arch = "lfm2"
        w.add_string("general.name", f"lfm2-edge synthetic {shape.name}")
        w.add_uint32("general.file_type", 1)  # MOSTLY_F16
        w.add_uint32(f"{arch}.context_length", lm.n_ctx_train)
        w.add_uint32(f"{arch}.embedding_length", lm.n_embd)
        w.add_uint32(f"{arch}.feed_forward_length", lm.n_ff)
        w.add_uint32(f"{arch}.block_count", len(lm.layer_types))
        w.add_uint32(f"{arch}.attention.head_count", lm.n_head)
        w.add_array(
            f"{arch}.attention.head_count_kv",
            [lm.n_head_kv if t == "attn" else 0 for t in lm.layer_types],
        )
        w.add_float32(f"{arch}.rope.freq_base", 1_000_000.0)
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        w.add_uint32(f"{arch}.vocab_size", lm.n_vocab)
        w.add_uint32(f"{arch}.shortconv.l_cache", lm.conv_l_cache)
        tokens, types, merges = build_vocab(lm.n_vocab, official_ids=lm.real_ids)
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", "lfm2")
        w.add_array("tokenizer.ggml.tokens", tokens)
        w.add_array("tokenizer.ggml.token_type", types)
        w.add_array("tokenizer.ggml.merges", merges)
        w.add_uint32("tokenizer.ggml.bos_token_id", tokens.index(BOS_TOKEN))
        w.add_uint32("tokenizer.ggml.eos_token_id", tokens.index(EOS_TOKEN))
        w.add_uint32("tokenizer.ggml.padding_token_id", tokens.index(PAD_TOKEN))
        w.add_bool("tokenizer.ggml.add_bos_token", shape.add_bos)
        w.add_bool("tokenizer.ggml.add_eos_token", False)
        w.add_string("tokenizer.chat_template", shape.chat_template or CHAT_TEMPLATE)
        for name, data in _lm_tensors(lm, _Init(seed)):
            w.add_tensor(name, data)

    return fill


def _fill_mmproj(shape: SyntheticShape, seed: int):
    v, lm = shape.vision, shape.lm

    def fill(w) -> None:
        w.add_string("general.type", "mmproj")
        w.add_string("general.name", f"lfm2-edge synthetic {shape.name} mmproj")
        w.add_uint32("general.file_type", QUANT_FTYPES[v.quant])
        w.add_string("clip.projector_type", "lfm2")
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.use_gelu", True)
        w.add_uint32("clip.vision.projection_dim", lm.n_embd)
        w.add_uint32("clip.vision.image_size", v.n_pos_per_side * v.patch_size)
        w.add_uint32("clip.vision.patch_size", v.patch_size)
        w.add_uint32("clip.vision.embedding_length", v.n_embd)
        w.add_uint32("clip.vision.feed_forward_length", v.n_ff)
        w.add_uint32("clip.vision.block_count", v.n_layer)
        w.add_uint32("clip.vision.attention.head_count", v.n_head)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
        w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
        w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
        w.add_uint32("clip.vision.projector.scale_factor", v.scale_factor)
        for name, data in _vision_tensors(v, lm.n_embd, _Init(seed + 1)):
            if v.quant == "F16":
                w.add_tensor(name, data)
            else:
                w.add_tensor(name, *_converter_quant(name, data, v.quant))

    return fill


QUANT_FTYPES: dict[str, int] = {"F16": 1, "Q8_0": 7, "Q4_0": 2}  # llama_ftype values


def _converter_quant(name: str, data: np.ndarray, quant: str) -> tuple[np.ndarray, Any, Any]:
    """A projector tensor typed as llama.cpp's converter types it for ``--outtype q8_0``
    (conversion/base.py ``prepare_tensors`` and ``MmprojModel.tensor_force_quant``):
    vectors, norms, biases and ``v.position_embd`` in F32, ``v.patch_embd.weight`` in F32,
    other matrices in Q8_0, falling back to F16 where a row is not a whole number of
    32-value blocks (the 1.6B tower's ffn_down, 4304 wide). Returns add_tensor's arguments."""
    import gguf

    f32 = np.asarray(data, dtype=np.float32)
    if data.ndim <= 1 or not name.endswith(".weight") or name.endswith("_norm.weight"):
        return f32, None, None
    if name in ("v.patch_embd.weight", "v.position_embd.weight"):
        return f32, None, None
    qtype = gguf.GGMLQuantizationType[quant]
    try:
        return gguf.quants.quantize(f32, qtype), None, qtype
    except gguf.QuantError:
        return f32.astype(np.float16), None, None


def quantize(src: Path, dst: Path, quant: str, n_threads: int | None = None) -> Path:
    """Quantize a GGUF language model with llama.cpp's own quantizer."""
    import ctypes

    import llama_cpp

    if quant not in QUANT_FTYPES:
        raise Lfm2EdgeError(f"unknown quant {quant!r}; choose one of {', '.join(QUANT_FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = n_threads or (os.cpu_count() or 1)
    tmp = dst.with_name(dst.name + ".partial")
    # The backends are initialised before the quantizer runs, as llama.cpp's own
    # llama-quantize does. On a CUDA build, loading a model after quantizing in the same
    # process was reported to crash; this order is the first suspect, not yet confirmed
    # on a GPU (scripts/gpu-check.sh runs the suite that does exactly this).
    llama_cpp.llama_backend_init()
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise Lfm2EdgeError(f"llama.cpp failed to quantize {src} to {quant} (code {rc})")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def make_synthetic_model(
    out_dir: str | os.PathLike[str],
    shape: str | SyntheticShape = "tiny",
    *,
    seed: int = 0,
    quants: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write ``model-F16.gguf`` and ``mmproj-F16.gguf`` (``mmproj-Q8_0.gguf`` for a Q8_0
    projector) and quantized models to ``out_dir``.

    Returns the written paths keyed by ``"F16"``, each quant name, and ``"mmproj"``.
    The output is deterministic for a given shape and seed.
    """
    if isinstance(shape, SyntheticShape):
        spec = shape
    elif shape in SHAPES:
        spec = SHAPES[shape]
    else:
        raise Lfm2EdgeError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"F16": out / "model-F16.gguf", "mmproj": out / f"mmproj-{spec.vision.quant}.gguf"}
    _write_atomic(paths["F16"], "lfm2", _fill_lm(spec, seed))
    _write_atomic(paths["mmproj"], "clip", _fill_mmproj(spec, seed))
    for quant in spec.quants if quants is None else quants:
        paths[quant] = quantize(paths["F16"], out / f"model-{quant}.gguf", quant)
    return paths
