"""Check GGUF files before llama.cpp sees them.

llama.cpp reports a bad file with a log line and a NULL (or, for some malformed
files, aborts the process). Reading the header with the ``gguf`` package first turns
the common mistakes (a missing file, a file that is not GGUF, a model of another
architecture, a projector made for another model) into one clear line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfm2_edge.errors import ModelFileError, ModelMismatchError

__all__ = ["GgufSummary", "check_model_files", "read_summary"]

GGUF_MAGIC = b"GGUF"
MODEL_ARCHS = ("lfm2",)
PROJECTOR_TYPES = ("lfm2",)


@dataclass(frozen=True)
class GgufSummary:
    path: Path
    architecture: str
    metadata: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def _scalar(field: Any) -> Any:
    import gguf

    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.STRING and len(types) == 1:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    if types[0] == gguf.GGUFValueType.ARRAY:
        return None  # arrays are not needed for the checks
    return field.parts[field.data[0]].tolist()[0]


def read_summary(path: str | os.PathLike[str], what: str = "model") -> GgufSummary:
    """Read a GGUF file's scalar metadata, or raise :class:`ModelFileError`."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{what} file not found: {p}")
    if p.is_dir():
        raise ModelFileError(f"{what} path {p} is a directory; give the .gguf file inside it")
    try:
        with p.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read {what} file {p}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{p} is not a GGUF file; download the {what} as .gguf")
    import gguf

    try:
        reader = gguf.GGUFReader(p, "r")
    except Exception:
        raise ModelFileError(f"{p} is a damaged or truncated GGUF file; download it again") from None
    size = p.stat().st_size
    data_end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if data_end > size:
        raise ModelFileError(f"{p} is truncated ({size} of at least {data_end} bytes); download it again")
    metadata = {name: _scalar(field) for name, field in reader.fields.items()}
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{p} has no general.architecture; it is not a usable GGUF {what}")
    return GgufSummary(p, arch, metadata)


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
