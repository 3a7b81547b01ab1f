"""A GGUF header reader that never trusts the file.

llama.cpp reports a bad file with a log line and a NULL, and aborts the whole process on
some malformed ones. This reader parses the header itself first, every length and offset
bounds-checked against the file: magic, version, metadata, tensor table, and that each
tensor's data lies inside the file. What the header must hold for lfm2-edge is checked
by :mod:`lfm2_edge.hub.validate`.

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

from lfm2_edge.errors import ModelFileError

__all__ = ["GgufSummary", "TensorInfo", "read_summary"]

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
MAX_COUNT = 1 << 24  # tensors, metadata keys, array items: far beyond any real model
MAX_STRING = 1 << 24
MAX_DIMS = 4
MAX_KEPT_ARRAY = 4096  # numeric arrays up to this length keep their values (head_count_kv, image_mean)

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
    data_start: int = 0  # the offset of the tensor data in the file
    arrays: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # short numeric arrays' values

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
        self.arrays: dict[str, tuple[Any, ...]] = {}

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
                at = self.take(n * struct.calcsize(_SCALARS[itype]), f"the array {key}")
                if n <= MAX_KEPT_ARRAY:
                    self.arrays[key] = struct.unpack_from(f"<{n}{_SCALARS[itype][1]}", self.buf, at)
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


class _Header(NamedTuple):
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    data_start: int  # where tensor data begins
    arrays: dict[str, tuple[Any, ...]]


def _parse(buf: mmap.mmap | bytes) -> _Header:
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
    return _Header(metadata, tensors, data_start, r.arrays)


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
                header = _parse(buf)
    except _Damaged as exc:
        detail = "".join(c if c.isprintable() else "?" for c in str(exc))  # names may be garbage
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise ModelFileError(f"{p} is a damaged or truncated GGUF file ({detail}); download it again") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {what} file {p}: {exc.strerror or exc}") from None
    arch = header.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{p} has no general.architecture; it is not a usable GGUF {what}")
    return GgufSummary(p, arch, header.metadata, header.tensors, header.data_start, header.arrays)
