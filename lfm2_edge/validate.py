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

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class GgufSummary:
    path: Path
    architecture: str
    metadata: dict[str, Any]  # scalars and strings; arrays as their length
    n_tensors: int = 0

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
            elif itype == _STRING:
                for _ in range(n):
                    self.take(self.scalar("<Q", f"a string in {key}"), f"a string in {key}")
            else:
                raise _Damaged(f"{key} is an array of unknown type {itype}")
            return n
        raise _Damaged(f"{key} has unknown value type {vtype}")


def _parse(buf: mmap.mmap | bytes) -> tuple[dict[str, Any], int]:
    """Metadata and tensor count of a GGUF image, every offset checked."""
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
    tensors = []
    for _ in range(n_tensors):
        name = r.string("a tensor name")
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
        tensors.append((name, offset, math.prod(dims) // block * type_size))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Damaged(f"general.alignment is {alignment!r}, not a power of two")
    data_start = -(-r.pos // alignment) * alignment
    for name, offset, nbytes in tensors:
        if offset % alignment:
            raise _Damaged(f"tensor {name} is not aligned to {alignment} bytes")
        if data_start + offset + nbytes > r.size:
            raise _Damaged(f"tensor {name} ends past the end of the file (truncated?)")
    return metadata, n_tensors


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
                metadata, n_tensors = _parse(buf)
    except _Damaged as exc:
        raise ModelFileError(f"{p} is a damaged or truncated GGUF file ({exc}); download it again") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {what} file {p}: {exc.strerror or exc}") from None
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{p} has no general.architecture; it is not a usable GGUF {what}")
    return GgufSummary(p, arch, metadata, n_tensors)


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
    if mmproj_path is None:
        return model, None
    proj = read_summary(mmproj_path, "mmproj")
    if proj.architecture != "clip":
        raise ModelFileError(f"{proj.path} is a {proj.architecture!r} model, not a vision projector (mmproj)")
    proj_type = proj.get("clip.projector_type") or proj.get("clip.vision.projector_type")
    if proj_type not in PROJECTOR_TYPES:
        raise ModelFileError(f"{proj.path} is a {proj_type!r} projector; LFM2-VL needs projector type 'lfm2'")
    n_embd = model.get(f"{model.architecture}.embedding_length")
    proj_dim = proj.get("clip.vision.projection_dim")
    if n_embd is not None and proj_dim is not None and n_embd != proj_dim:
        raise ModelMismatchError(
            f"{proj.path.name} projects to {proj_dim} dims but {model.path.name} has {n_embd}; "
            "use the mmproj file from the same model repo"
        )
    return model, proj
