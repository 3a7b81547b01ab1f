"""Check GGUF files before llama.cpp sees them.

llama.cpp reports a bad file with a log line and a NULL, and aborts the whole process on
some malformed ones. lfm2-edge reads the header itself first, every length and offset
bounds-checked against the file: magic, version, metadata, tensor table, and that each
tensor's data lies inside the file. The common mistakes (a missing file, a file that is
not GGUF, a truncated download, a model of another architecture, a projector made for
another model) become one clear line.

A hand-written reader, not ``gguf.GGUFReader``: that one builds numpy views of every
array and takes ~1.7 s on a 65k-token vocabulary, longer than llama.cpp's own load.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from lfm2_edge.errors import ModelFileError, ModelMismatchError

__all__ = ["GgufSummary", "check_model_files", "read_summary"]

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
MODEL_ARCHS = ("lfm2",)
PROJECTOR_TYPES = ("lfm2",)
MAX_COUNT = 1 << 24  # tensors, metadata keys, array items: far beyond any real model
MAX_STRING = 1 << 24
MAX_DIMS = 4

# GGUF value types: struct format of the fixed-size ones.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class TensorInfo(NamedTuple):
    shape: tuple[int, ...]
    ggml_type: int
    nbytes: int


@dataclass(frozen=True)
class GgufSummary:
    path: Path
    architecture: str
    metadata: dict[str, Any]  # scalars and strings; arrays as their length
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


class _Damaged(Exception):
    """The header contradicts itself or the file's size; the message says where."""


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise _Damaged(f"{what} runs past the end of the file")
        at = self.pos
        self.pos += n
        return at

    def scalar(self, fmt: str, what: str) -> Any:
        at = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, at)[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        if n > MAX_STRING:
            raise _Damaged(f"{what} claims {n} bytes")
        at = self.take(n, what)
        return bytes(self.buf[at : at + n]).decode("utf-8", "replace")

    def count(self, what: str) -> int:
        n = self.scalar("<Q", what)
        if n > MAX_COUNT:
            raise _Damaged(f"{what} is {n}, an impossible count")
        return int(n)

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], f"the value of {key}")
        if vtype == _STRING:
            return self.string(f"the value of {key}")
        if vtype == _ARRAY:
            itype = self.scalar("<I", f"the array type of {key}")
            n = self.count(f"the length of {key}")
            if itype in _SCALARS:
                self.take(n * struct.calcsize(_SCALARS[itype]), f"the array {key}")
            elif itype == _STRING and key == "tokenizer.ggml.tokens":
                # llama.cpp asserts (aborts) when two tokens have the same text, read as
                # C strings (up to a NUL byte)
                seen = set()
                for _ in range(n):
                    size = self.scalar("<Q", f"a string in {key}")
                    at = self.take(size, f"a string in {key}")
                    seen.add(bytes(self.buf[at : at + size]).split(b"\0", 1)[0])
                if len(seen) != n:
                    raise _Damaged(f"{key} holds {n - len(seen)} duplicate token(s)")
            elif itype == _STRING:
                for _ in range(n):
                    self.take(self.scalar("<Q", f"a string in {key}"), f"a string in {key}")
            else:
                raise _Damaged(f"{key} is an array of unknown type {itype}")
            return n
        raise _Damaged(f"{key} has unknown value type {vtype}")


def _parse(buf: mmap.mmap | bytes) -> tuple[dict[str, Any], dict[str, TensorInfo], int]:
    """Metadata, tensors and data offset of a GGUF image, every offset checked."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    r = _Reader(buf)
    r.take(4, "the magic")
    version = r.scalar("<I", "the version")
    if version not in GGUF_VERSIONS:
        raise _Damaged(f"GGUF version {version} is not one llama.cpp reads ({', '.join(map(str, GGUF_VERSIONS))})")
    n_tensors = r.count("the tensor count")
    n_kv = r.count("the metadata count")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string("a metadata key")
        metadata[key] = r.value(r.scalar("<I", f"the type of {key}"), key)
    tensors: dict[str, TensorInfo] = {}
    offsets: dict[str, int] = {}
    for _ in range(n_tensors):
        name = r.string("a tensor name")
        if not name or not name.isascii() or not name.isprintable():
            raise _Damaged(f"a tensor name is not text ({name[:40]!r})")
        if name in tensors:
            raise _Damaged(f"tensor {name} appears twice")
        n_dims = r.scalar("<I", f"the rank of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Damaged(f"tensor {name} has {n_dims} dimensions")
        dims = [r.scalar("<Q", f"the shape of {name}") for _ in range(n_dims)]
        ttype = r.scalar("<I", f"the type of {name}")
        offset = r.scalar("<Q", f"the offset of {name}")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise _Damaged(f"tensor {name} has unknown type {ttype}") from None
        if any(d <= 0 or d > 1 << 40 for d in dims) or dims[0] % block:
            raise _Damaged(f"tensor {name} has an impossible shape {dims}")
        tensors[name] = TensorInfo(tuple(dims), ttype, math.prod(dims) // block * type_size)
        offsets[name] = offset
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Damaged(f"general.alignment is {alignment!r}, not a power of two")
    data_start = -(-r.pos // alignment) * alignment
    for name, offset in offsets.items():
        nbytes = tensors[name].nbytes
        if offset % alignment:
            raise _Damaged(f"tensor {name} is not aligned to {alignment} bytes")
        if data_start + offset + nbytes > r.size:
            raise _Damaged(f"tensor {name} ends past the end of the file (truncated?)")
    spans = sorted((offset, offset + tensors[name].nbytes, name) for name, offset in offsets.items())
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise _Damaged(f"tensors {first} and {second} overlap")
    return metadata, tensors, data_start


def read_summary(path: str | os.PathLike[str], what: str = "model") -> GgufSummary:
    """Read and check a GGUF file's header, or raise :class:`ModelFileError`."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{what} file not found: {p}")
    if p.is_dir():
        raise ModelFileError(f"{what} path {p} is a directory; give the .gguf file inside it")
    try:
        with p.open("rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise ModelFileError(f"{p} is not a GGUF file; download the {what} as .gguf")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                metadata, tensors, _ = _parse(buf)
    except _Damaged as exc:
        detail = "".join(c if c.isprintable() else "?" for c in str(exc))  # names may be garbage
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise ModelFileError(f"{p} is a damaged or truncated GGUF file ({detail}); download it again") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {what} file {p}: {exc.strerror or exc}") from None
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{p} has no general.architecture; it is not a usable GGUF {what}")
    return GgufSummary(p, arch, metadata, tensors)


def check_model_files(
    model_path: str | os.PathLike[str], mmproj_path: str | os.PathLike[str] | None
) -> tuple[GgufSummary, GgufSummary | None]:
    """Check that the model is an LFM2 GGUF and the mmproj an LFM2 projector made for it."""
    model = read_summary(model_path, "model")
    if model.architecture == "clip":
        raise ModelFileError(
            f"{model.path} is a vision projector (mmproj); pass it as --mmproj and give the language model as --model"
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
