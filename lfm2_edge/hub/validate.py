"""Check GGUF files before llama.cpp sees them.

The header is read by :func:`lfm2_edge.hub.gguf.read_summary`, every offset
bounds-checked; this module checks what lfm2-edge needs of it. The common mistakes (a
missing file, a file that is not GGUF, a truncated download, a model of another
architecture, a projector made for another model) become one clear line.
"""

from __future__ import annotations

import os

from lfm2_edge.errors import ModelFileError, ModelMismatchError
from lfm2_edge.hub.gguf import GgufSummary, read_summary

__all__ = ["check_model_files"]

MODEL_ARCHS = ("lfm2",)
PROJECTOR_TYPES = ("lfm2",)


def check_model_files(
    model_path: str | os.PathLike[str], mmproj_path: str | os.PathLike[str] | None
) -> tuple[GgufSummary, GgufSummary | None]:
    """Check that the model is an LFM2 GGUF and the mmproj an LFM2 projector made for it."""
    model = read_summary(model_path, "model")
    if model.architecture == "clip":
        raise ModelFileError(
            f"{model.path} is a vision projector (mmproj), not a language model; "
            "give the LFM2 language model GGUF as the model and this file as the projector"
        )
    if model.architecture not in MODEL_ARCHS:
        raise ModelFileError(
            f"{model.path} is a {model.architecture!r} model; lfm2-edge runs LFM2 models (arch 'lfm2')"
        )
    _check_lm(model)
    if mmproj_path is None:
        return model, None
    proj = read_summary(mmproj_path, "mmproj")
    if proj.architecture != "clip":
        raise ModelFileError(f"{proj.path} is a {proj.architecture!r} model, not a vision projector (mmproj)")
    proj_type = proj.get("clip.projector_type") or proj.get("clip.vision.projector_type")
    if proj_type not in PROJECTOR_TYPES:
        raise ModelFileError(f"{proj.path} is a {proj_type!r} projector; LFM2-VL needs projector type 'lfm2'")
    _check_projector(proj)
    n_embd = model.get(f"{model.architecture}.embedding_length")
    proj_dim = proj.get("clip.vision.projection_dim")
    if n_embd is not None and proj_dim is not None and n_embd != proj_dim:
        raise ModelMismatchError(
            f"{proj.path.name} projects to {proj_dim} dims but {model.path.name} has {n_embd}; "
            "use the mmproj file from the same model repo"
        )
    return model, proj


def _hyper(summary: GgufSummary, key: str, low: int, high: int, *, required: bool = True) -> int | None:
    """An integer hyperparameter within [low, high]: llama.cpp divides by some and sizes
    buffers by others, and does not check them all before it does."""
    value = summary.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelFileError(
            f"{summary.path} is damaged: {key} is {repr(value)[:40]}, expected {low}..{high}; download it again"
        )
    return value


def _check_lm(model: GgufSummary) -> None:
    arch = model.architecture
    n_embd = _hyper(model, f"{arch}.embedding_length", 1, 1 << 16)
    n_head = _hyper(model, f"{arch}.attention.head_count", 1, 1024)
    _hyper(model, f"{arch}.block_count", 1, 1024)
    _hyper(model, f"{arch}.context_length", 1, 1 << 24)
    _hyper(model, f"{arch}.feed_forward_length", 1, 1 << 20)
    assert n_embd is not None and n_head is not None
    if n_embd % n_head:
        raise ModelFileError(f"{model.path} is damaged: {n_head} heads do not divide {n_embd} dims; download it again")
    n_tokens = model.get("tokenizer.ggml.tokens")
    embd = model.tensors["token_embd.weight"].shape if "token_embd.weight" in model.tensors else None
    if embd is not None and (
        len(embd) != 2 or embd[0] != n_embd or (isinstance(n_tokens, int) and embd[1] != n_tokens)
    ):
        raise ModelFileError(
            f"{model.path} is damaged: token_embd.weight is {list(embd)} for {n_embd} dims and "
            f"{n_tokens} tokens; download it again"
        )


def _check_projector(proj: GgufSummary) -> None:
    """The hyperparameters and tensors the LFM2 projector's graph is built from.

    clip.cpp trusts them: a missing tensor is a NULL it dereferences, a wrong shape an
    assertion that aborts the process.
    """
    n_embd = _hyper(proj, "clip.vision.embedding_length", 1, 1 << 14)
    n_head = _hyper(proj, "clip.vision.attention.head_count", 1, 256)
    n_ff = _hyper(proj, "clip.vision.feed_forward_length", 1, 1 << 16)
    n_layer = _hyper(proj, "clip.vision.block_count", 1, 256)
    patch = _hyper(proj, "clip.vision.patch_size", 1, 256)
    size = _hyper(proj, "clip.vision.image_size", 1, 8192)
    _hyper(proj, "clip.vision.projection_dim", 1, 1 << 16)
    _hyper(proj, "clip.vision.projector.scale_factor", 2, 16)  # clip.cpp asserts > 1
    assert n_embd and n_head and n_ff and n_layer and patch and size
    if n_embd % n_head or size % patch:
        raise ModelFileError(
            f"{proj.path} is damaged: {n_head} heads for {n_embd} dims, {patch}-pixel patches of a "
            f"{size}-pixel image; download it again"
        )
    expected: dict[str, tuple[int, ...] | None] = {
        "v.patch_embd.weight": None,
        "mm.1.weight": None,
        "mm.2.weight": None,
    }
    for i in range(n_layer):
        b = f"v.blk.{i}"
        expected.update(
            {
                f"{b}.attn_q.weight": (n_embd, n_embd),
                f"{b}.attn_k.weight": (n_embd, n_embd),
                f"{b}.attn_v.weight": (n_embd, n_embd),
                f"{b}.attn_out.weight": (n_embd, n_embd),
                f"{b}.ffn_up.weight": (n_embd, n_ff),
                f"{b}.ffn_down.weight": (n_ff, n_embd),
                f"{b}.ln1.weight": (n_embd,),
                f"{b}.ln2.weight": (n_embd,),
            }
        )
        for part, dims in (
            ("attn_q", n_embd),
            ("attn_k", n_embd),
            ("attn_v", n_embd),
            ("attn_out", n_embd),
            ("ffn_up", n_ff),
            ("ffn_down", n_embd),
            ("ln1", n_embd),
            ("ln2", n_embd),
        ):
            if f"{b}.{part}.bias" in proj.tensors:
                expected[f"{b}.{part}.bias"] = (dims,)
    for name, shape in expected.items():
        info = proj.tensors.get(name)
        if info is None:
            raise ModelFileError(f"{proj.path} is damaged or not an LFM2-VL projector: tensor {name} is missing")
        got = info.shape
        if shape is not None and got != shape:
            raise ModelFileError(
                f"{proj.path} is damaged: tensor {name} is {list(got)}, expected {list(shape)}; download it again"
            )
