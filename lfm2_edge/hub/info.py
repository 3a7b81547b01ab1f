"""What a model file is, from its GGUF headers alone: ``lfm2-edge info MODEL``.

No weights are loaded and nothing is run: the headers are read by
:func:`lfm2_edge.hub.gguf.read_summary` (every offset checked). The report is what to
ask a user for first when a real file misbehaves: architecture, the layer pattern, the
quant types, the vocabulary and special tokens, the chat template (present? its hash),
the projector's layout, the catalog's presets, and whether :mod:`lfm2_edge.hub.validate`
accepts the pair.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any

from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.hub.catalog import VL, CatalogEntry
from lfm2_edge.hub.gguf import GgufSummary, read_summary
from lfm2_edge.hub.validate import check_model_files
from lfm2_edge.prompt.template import template_of

__all__ = ["describe", "describe_lm", "describe_projector", "report_lines"]

# llama.cpp's defaults for projector type lfm2 (clip.cpp set_limit_image_tokens(64, 256)):
# no GGUF carries an image-token budget.
LLAMA_CPP_IMAGE_TOKENS = (64, 256)


def _type_name(ggml_type: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type{ggml_type}"


def _file_type(value: Any) -> str | None:
    if not isinstance(value, int):
        return None
    from gguf import LlamaFileType

    try:
        return LlamaFileType(value).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(value)


def _types(summary: GgufSummary) -> dict[str, int]:
    """How many tensors of each ggml type, most first."""
    counts = Counter(_type_name(t.ggml_type) for t in summary.tensors.values())
    return dict(counts.most_common())


def _layer_pattern(s: GgufSummary, n_layer: int) -> list[str]:
    """``attn`` / ``conv`` per block: from head_count_kv (0 = short conv), else the tensors."""
    kv = s.arrays.get(f"{s.architecture}.attention.head_count_kv")
    if kv is not None and len(kv) == n_layer:
        return ["attn" if n else "conv" for n in kv]
    return ["attn" if f"blk.{i}.attn_q.weight" in s.tensors else "conv" for i in range(n_layer)]


def describe_lm(s: GgufSummary, *, verbose: bool = False) -> dict[str, Any]:
    arch = s.architecture
    n_layer = int(s.get(f"{arch}.block_count") or 0)
    pattern = _layer_pattern(s, n_layer)
    kv = s.arrays.get(f"{arch}.attention.head_count_kv", s.get(f"{arch}.attention.head_count_kv"))
    tmpl = template_of(s, verbose=verbose)
    embd = s.tensors.get("token_embd.weight")
    return {
        "path": str(s.path),
        "size": s.path.stat().st_size,
        "name": s.get("general.name"),
        "architecture": arch,
        "file_type": _file_type(s.get("general.file_type")),
        "tensor_types": _types(s),
        "token_embd_type": _type_name(embd.ggml_type) if embd else None,
        "tied_output": "output.weight" not in s.tensors,
        "final_norm": next((n for n in ("token_embd_norm.weight", "output_norm.weight") if n in s.tensors), None),
        "n_layer": n_layer,
        "layer_pattern": "".join("A" if t == "attn" else "C" for t in pattern),
        "n_attention_layers": pattern.count("attn"),
        "head_count_kv": list(kv) if isinstance(kv, tuple) else kv,
        "n_embd": s.get(f"{arch}.embedding_length"),
        "n_ff": s.get(f"{arch}.feed_forward_length"),
        "n_head": s.get(f"{arch}.attention.head_count"),
        "context_length": s.get(f"{arch}.context_length"),
        "vocab": {
            "model": s.get("tokenizer.ggml.model"),
            "pre": s.get("tokenizer.ggml.pre"),
            "tokens": s.get("tokenizer.ggml.tokens"),
            "merges": s.get("tokenizer.ggml.merges"),
            "bos": s.get("tokenizer.ggml.bos_token_id"),
            "eos": s.get("tokenizer.ggml.eos_token_id"),
            "pad": s.get("tokenizer.ggml.padding_token_id"),
            "add_bos": s.get("tokenizer.ggml.add_bos_token"),
        },
        "chat_template": {
            "present": tmpl.source is not None,
            "bytes": len(tmpl.source.encode("utf-8")) if tmpl.source is not None else 0,
            "sha256": tmpl.sha256,
            "compiles": tmpl.usable,
            "handles_tools": tmpl.handles_tools,
        },
    }


def describe_projector(p: GgufSummary) -> dict[str, Any]:
    mm1 = p.tensors.get("mm.1.weight")
    has_norm = "mm.input_norm.weight" in p.tensors
    n_layer = p.get("clip.vision.block_count")
    extra = sum(
        1
        for name in p.tensors
        if name.startswith("v.blk.")
        and isinstance(n_layer, int)
        and name.split(".")[2].isdigit()
        and int(name.split(".")[2]) >= n_layer
    )
    return {
        "path": str(p.path),
        "size": p.path.stat().st_size,
        "name": p.get("general.name"),
        "projector_type": p.get("clip.projector_type") or p.get("clip.vision.projector_type"),
        "file_type": _file_type(p.get("general.file_type")),
        "tensor_types": _types(p),
        "patch_embd_type": _type_name(p.tensors["v.patch_embd.weight"].ggml_type)
        if "v.patch_embd.weight" in p.tensors
        else None,
        "n_embd": p.get("clip.vision.embedding_length"),
        "n_layer": n_layer,
        "unused_block_tensors": extra,
        "n_head": p.get("clip.vision.attention.head_count"),
        "n_ff": p.get("clip.vision.feed_forward_length"),
        "patch_size": p.get("clip.vision.patch_size"),
        "image_size": p.get("clip.vision.image_size"),
        "scale_factor": p.get("clip.vision.projector.scale_factor"),
        "projection_dim": p.get("clip.vision.projection_dim"),
        "projector_hidden": mm1.shape[1] if mm1 is not None and len(mm1.shape) == 2 else None,
        "input_norm": has_norm,
        "layout": "LFM2-VL (mm.input_norm)" if has_norm else "LFM2.5-VL (no mm.input_norm)",
        "image_mean": list(p.arrays.get("clip.vision.image_mean", ())),
        "image_std": list(p.arrays.get("clip.vision.image_std", ())),
    }


def describe(
    model_path: str | os.PathLike[str],
    mmproj_path: str | os.PathLike[str] | None = None,
    *,
    entry: CatalogEntry | None = None,
    ref: str | None = None,
) -> dict[str, Any]:
    """The report for a model file (and its projector); raises :class:`ModelFileError`
    only when a header cannot be read at all."""

    lm = read_summary(model_path, "model")
    out: dict[str, Any] = {"ref": ref or str(model_path), "model": describe_lm(lm)}
    if mmproj_path is not None:
        out["mmproj"] = describe_projector(read_summary(mmproj_path, "mmproj"))
    try:
        check_model_files(model_path, mmproj_path)
        out["check"] = "ok"
    except Lfm2EdgeError as exc:
        out["check"] = str(exc)
    if entry is not None:
        out["catalog"] = {
            "name": entry.name,
            "family": entry.family,
            "repo": entry.repo,
            "image_min_tokens": entry.image_min_tokens,
            "image_max_tokens": entry.image_max_tokens,
            "system_prompt": entry.system_prompt,
            "sampling": dataclasses.asdict(entry.sampling),
        }
    elif mmproj_path is not None:
        out["catalog"] = {
            "name": None,
            "image_min_tokens": VL.image_min_tokens,
            "image_max_tokens": VL.image_max_tokens,
        }
    out["llama_cpp_image_tokens"] = list(LLAMA_CPP_IMAGE_TOKENS)
    return out


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def report_lines(info: dict[str, Any]) -> list[str]:
    """The report as ``key: value`` lines for a terminal."""
    m = info["model"]
    v = m["vocab"]
    t = m["chat_template"]
    lines = [
        f"model: {m['path']} ({m['size']:,} bytes)",
        f"  architecture: {m['architecture']}  name: {m['name']}  file type: {m['file_type']}",
        f"  layers: {m['n_layer']} ({m['layer_pattern']}; A attention x{m['n_attention_layers']}, C short conv)",
        f"  head_count_kv: {m['head_count_kv']}",
        f"  n_embd {m['n_embd']}, n_ff {m['n_ff']}, n_head {m['n_head']}, context {m['context_length']}",
        f"  tensor types: {_kv(m['tensor_types'])}; token_embd {m['token_embd_type']}",
        f"  output: {'tied to token_embd' if m['tied_output'] else 'output.weight'}; final norm {m['final_norm']}",
        f"  vocab: {v['tokens']} tokens, {v['merges']} merges, {v['model']}/{v['pre']}; "
        f"bos {v['bos']}, eos {v['eos']}, pad {v['pad']}, add_bos {v['add_bos']}",
        "  chat template: "
        + (
            f"{t['bytes']} bytes, sha256 {t['sha256']}"
            + ("" if t["compiles"] else " (does not compile: the built-in ChatML is used)")
            + (", handles tools" if t["handles_tools"] else "")
            if t["present"]
            else "none (the built-in LFM2 ChatML is used)"
        ),
    ]
    p = info.get("mmproj")
    if p is not None:
        lines += [
            f"mmproj: {p['path']} ({p['size']:,} bytes)",
            f"  projector: {p['projector_type']}, layout {p['layout']}, file type {p['file_type']}",
            f"  vision: {p['n_embd']} dims, {p['n_layer']} blocks, {p['n_head']} heads, ff {p['n_ff']}, "
            f"patch {p['patch_size']}, image_size {p['image_size']}, scale factor {p['scale_factor']}",
            f"  projector: hidden {p['projector_hidden']} -> {p['projection_dim']} dims",
            f"  tensor types: {_kv(p['tensor_types'])}; patch_embd {p['patch_embd_type']}",
            f"  image mean {p['image_mean']}, std {p['image_std']}",
        ]
    c = info.get("catalog")
    if c is not None:
        lines.append(
            f"catalog: {c['name'] or '(not in the catalog: VL defaults)'}; image tokens "
            f"{c['image_min_tokens']}..{c['image_max_tokens']} (llama.cpp's own: "
            f"{info['llama_cpp_image_tokens'][0]}..{info['llama_cpp_image_tokens'][1]})"
        )
    lines.append(f"check: {info['check']}")
    return lines
